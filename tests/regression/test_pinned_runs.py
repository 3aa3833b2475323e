"""Behaviour is unchanged (issue 16, item 7): short seeded runs end with exactly the metrics and parameters
they ended with before the registry / engine refactoring.

The fingerprints below were computed with ``python tests/regression/runs.py``, first on main at 2da00b7. A
change that alters a run on purpose (a bug fix, a new default) regenerates them and says why in its commit.
The last ones: Ditto's personal stream spawned, not forked (its personalised mean); the vectorised engine's
task losses computed over all of a chunk's rows outside ``vmap`` (the parameters' last bits, and PCGrad's
digit loss in the sixth decimal: rounding only, every metric else unchanged).
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
        "params": "4a77d52a5add41b5"
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
        "params": "4cbd91fce2fa812f"
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
        "params": "91f73aabfc099983"
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
        "params": "64dd9bacd99167f1"
    },
    "pcgrad": {
        "global": {
            "digit": {
                "accuracy": 0.083333,
                "loss": 2.313997,
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
        "params": "79c16f67c710c98f"
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
        "params": "310b284746b53b40"
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
        "params": "4a77d52a5add41b5"
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
        "params": "6cb00cc1bbf210e6"
    }
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_seeded_run_is_unchanged(name, tmp_path):
    assert fingerprint(name, str(tmp_path)) == PINNED[name]
