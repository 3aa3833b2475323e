"""The Python blocks of docs/extending.md run, in order, in one namespace: each adds a component from
outside the package (balancer, algorithm, codec, aggregator, model) and runs a tiny experiment with it."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_block_of_the_extending_guide_runs(clean_registry):
    assert len(BLOCKS) >= 7
    namespace: dict[str, object] = {"__name__": "extending_example"}
    for i, code in enumerate(BLOCKS):
        exec(compile(code, f"{DOC}:block{i}", "exec", dont_inherit=True), namespace)  # as a user's module runs it
    for kind, name in (("balancer", "unit_norm"), ("algorithm", "fedavg_decay"), ("codec", "fixed16"), ("aggregator", "geomed"), ("model", "two_layer")):
        assert clean_registry.get(kind, name).origin == "extending_example"  # registered from outside fedmtl
