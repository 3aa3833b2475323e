"""The README's recipes are valid configurations (documented examples run as tests)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedmtl.config import config_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe_lines() -> list[str]:
    block = README.read_text().split("## Recipes", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_recipe_validates():
    lines = recipe_lines()
    assert len(lines) >= 8
    for line in lines:
        config_from_dict(yaml.safe_load(line))
