"""The generated docs match the code (scripts/gen_docs.py), and the README's demo paragraph matches the demo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _gen_docs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_defaults_are_the_config_models():
    gen = _gen_docs()
    assert (ROOT / "docs" / "configuration.md").read_text() == gen.config_doc(), "run: python scripts/gen_docs.py"


def test_defaults_block_states_true_defaults():
    from fedmtl.config import ExperimentConfig

    block = _gen_docs().render_defaults().split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == ExperimentConfig().model_dump(mode="json")


def test_api_reference_is_the_docstrings():
    gen = _gen_docs()
    assert (ROOT / "docs" / "api.md").read_text() == gen.render_api(), "run: python scripts/gen_docs.py"


def test_readme_demo_paragraph_states_the_demo_config():
    from fedmtl.cli import _demo_config_path

    demo = yaml.safe_load(_demo_config_path().read_text())
    text = " ".join((ROOT / "README.md").read_text().split())
    data = demo["data"]
    assert f"trains {data['num_clients']} MNIST-1D clients" in text
    assert f"(Dirichlet α = {data['partition']['alpha']})" in text
    assert f"{demo['server']['rounds']} rounds reach" in text
    numbers = {2: "two", 3: "three"}
    tasks = data["source"]["tasks"]
    assert f"on {numbers[len(tasks)]} tasks" in text and all(f"**{t}**" in text for t in tasks)
    assert f"holds {numbers[data['task_assignment']['tasks_per_client']]} of the {numbers[len(tasks)]} tasks" in text
