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
