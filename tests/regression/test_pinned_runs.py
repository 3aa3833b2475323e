"""Behaviour is unchanged (issue 16, item 7): short seeded runs end with exactly the metrics and parameters
they ended with before the registry / engine refactoring.

The fingerprints below were computed on main at 2da00b7 with ``python tests/regression/runs.py``. A change
that alters a run on purpose (a bug fix, a new default) regenerates them and says why in its commit.
"""

from __future__ import annotations

import pytest

from regression.runs import RUNS, fingerprint

PINNED = {
    "fedavg": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.314324,
                "macro_f1": 0.043098
            },
            "parity": {
                "accuracy": 0.491667,
                "auc": 0.477894,
                "f1": 0.519685,
                "loss": 0.702538
            }
        },
        "personalized_mean": 0.283632,
        "params": "00b4a746926ecb94"
    },
    "scaffold": {
        "global": {
            "digit": {
                "accuracy": 0.075,
                "loss": 2.310972,
                "macro_f1": 0.035372
            },
            "parity": {
                "accuracy": 0.491667,
                "auc": 0.47719,
                "f1": 0.487395,
                "loss": 0.700368
            }
        },
        "personalized_mean": 0.297315,
        "params": "28320c9701d249d8"
    },
    "ditto": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.314324,
                "macro_f1": 0.043098
            },
            "parity": {
                "accuracy": 0.491667,
                "auc": 0.477894,
                "f1": 0.519685,
                "loss": 0.702538
            }
        },
        "personalized_mean": 0.372128,
        "params": "197bca5e7ee190c2"
    },
    "fedem": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.319924,
                "macro_f1": 0.042241
            },
            "parity": {
                "accuracy": 0.483333,
                "auc": 0.475359,
                "f1": 0.483333,
                "loss": 0.700939
            }
        },
        "personalized_mean": 0.337789,
        "params": "5b3229b6097eada1"
    },
    "pcgrad": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.313998,
                "macro_f1": 0.043098
            },
            "parity": {
                "accuracy": 0.483333,
                "auc": 0.48085,
                "f1": 0.507937,
                "loss": 0.702113
            }
        },
        "personalized_mean": 0.283632,
        "params": "8b8d60fde8003589"
    },
    "secagg": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.314324,
                "macro_f1": 0.043098
            },
            "parity": {
                "accuracy": 0.491667,
                "auc": 0.477894,
                "f1": 0.519685,
                "loss": 0.702538
            }
        },
        "personalized_mean": 0.283632,
        "params": "0a8aaf998585ee64"
    },
    "vectorized_dwa": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.314324,
                "macro_f1": 0.043098
            },
            "parity": {
                "accuracy": 0.491667,
                "auc": 0.477894,
                "f1": 0.519685,
                "loss": 0.702538
            }
        },
        "personalized_mean": 0.283632,
        "params": "00b4a746926ecb94"
    },
    "topk_fedadam": {
        "global": {
            "digit": {
                "accuracy": 0.075,
                "loss": 2.320246,
                "macro_f1": 0.036326
            },
            "parity": {
                "accuracy": 0.483333,
                "auc": 0.469868,
                "f1": 0.483333,
                "loss": 0.701212
            }
        },
        "personalized_mean": 0.268541,
        "params": "23b30af92612a9cb"
    }
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_seeded_run_is_unchanged(name, tmp_path):
    assert fingerprint(name, str(tmp_path)) == PINNED[name]
