"""docs/data.md documents every option of the table source and of the small-client rule, with true defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedmtl.config.data import SmallClients, TableSource, TaskSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def documented(section: str) -> dict[str, str]:
    """``option -> default`` from the first table under the ``## section`` heading."""
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", text, flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def expected(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    out = {}
    for name, field in model.model_fields.items():
        if name == "name" and prefix == "":  # the discriminator: `name: table` itself
            continue
        if field.is_required():
            out[prefix + name] = "required"
        else:
            default = field.get_default(call_default_factory=True)
            out[prefix + name] = "`null`" if default is None else f"`{default}`"
    return out


@pytest.mark.parametrize(
    ("section", "models"),
    [("Your own table", [(TableSource, ""), (TaskSpec, "tasks[].")]), ("Small clients", [(SmallClients, "small_clients.")])],
)
def test_every_option_is_documented_with_its_default(section, models):
    want: dict[str, str] = {}
    for model, prefix in models:
        want.update(expected(model, prefix))
    assert documented(section) == want
