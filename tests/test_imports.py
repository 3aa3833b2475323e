"""``import fedmtl`` stays light and leaves the root logger alone (issue 19)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from fedmtl._extras import MissingExtraError, require

HEAVY = ("opacus", "matplotlib", "scipy", "cvxpy", "flwr", "pandas", "sklearn", "mnist1d", "cryptography", "tensorboard", "mlflow", "wandb")

PROBE = """
import json, logging, sys
before = list(logging.getLogger().handlers)
import fedmtl
import fedmtl.cli
fedmtl.Experiment, fedmtl.from_arrays  # the whole simulation, loaded on first use
import fedmtl.comm, fedmtl.fl, fedmtl.mtl, fedmtl.privacy, fedmtl.report, fedmtl.tracking
after = list(logging.getLogger().handlers)
print(json.dumps({"modules": sorted(m for m in sys.modules), "new_handlers": len(after) - len(before)}))
"""


def test_import_loads_no_optional_dependency_and_no_root_handler():
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    loaded = {m.split(".")[0] for m in probe["modules"]}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    assert probe["new_handlers"] == 0


def test_require_names_the_extra_to_install():
    with pytest.raises(MissingExtraError, match=r"pip install 'fedmtl\[privacy\]'") as info:
        require("fedmtl_no_such_module.sub", "privacy", "DP accounting")
    assert "DP accounting" in str(info.value) and "'fedmtl_no_such_module'" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_require_takes_back_root_handlers_an_import_adds(tmp_path, monkeypatch):
    # a module that, like Opacus, calls logging.basicConfig when imported
    (tmp_path / "noisy_dep.py").write_text("import logging\nlogging.basicConfig()\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # basicConfig only adds a handler to a bare root logger
    assert require("noisy_dep", "privacy", "a test").VALUE == 1
    assert root.handlers == []


def test_opacus_import_through_fedmtl_adds_no_root_handler():
    pytest.importorskip("opacus")
    code = (
        "import logging; import fedmtl\n"
        "from fedmtl.privacy.dp import noise_for_target_epsilon\n"
        "noise_for_target_epsilon(8.0, 1e-5, 0.1, 10)\n"
        "import sys; assert 'opacus' in sys.modules\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "0"


FLOWER_PROBE = """
import json, pkgutil, sys, importlib
import fedmtl.integrations.flower as pkg
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"{pkg.__name__}.{info.name}")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("fedmtl."))))
"""


def _imported_names(path) -> set[str]:
    """Every module an ``import``/``from ... import`` anywhere in the file names (inside functions too)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_flower_integration_imports_nothing_from_the_experiment_or_the_cli():
    """What the simulation and the deployment both need lives below both (issue 16): fedmtl.runloop."""
    pytest.importorskip("flwr")
    from pathlib import Path

    import fedmtl.integrations.flower as flower

    def banned(name: str) -> bool:
        return name in ("fedmtl.experiment", "fedmtl.cli") or name.startswith(("fedmtl.experiment.", "fedmtl.cli."))

    files = sorted(Path(flower.__file__).parent.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        assert not {n for n in _imported_names(path) if banned(n)}, path.name
    out = subprocess.run([sys.executable, "-c", FLOWER_PROBE], check=True, capture_output=True, text=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "fedmtl.integrations.flower.client_app" in loaded and "fedmtl.runloop.checkpoint" in loaded
    assert not [m for m in loaded if banned(m)]
