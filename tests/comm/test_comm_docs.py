"""The YAML examples in docs/communication.md are valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fedmtl.config.comm import CommConfig
from fedmtl.config.training import ServerConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "communication.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S) if DOC.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="docs/communication.md not present")
@pytest.mark.parametrize("block", BLOCKS)
def test_yaml_examples_validate(block):
    doc = yaml.safe_load(block)
    if "comm" in doc:
        CommConfig(**doc["comm"])
    if "server" in doc:
        ServerConfig(**doc["server"])


def test_compressed_example_is_the_demo_with_compression_only():
    root = Path(__file__).resolve().parents[2]
    example = yaml.safe_load((root / "examples" / "configs" / "compressed.yaml").read_text())
    # the experiment the compression figures are measured on: the built-in demo (CNN1D trunk, FedAvgM, 40 rounds)
    demo = yaml.safe_load((root / "src" / "fedmtl" / "configs" / "demo.yaml").read_text())
    comm = CommConfig(**example.pop("comm"))
    assert comm.downlink_delta and all(c.name != "identity" for c in comm.uplink)
    example.pop("output"), demo.pop("output")
    assert example == demo  # the same experiment, so its accuracy compares with the demo's
