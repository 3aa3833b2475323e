"""Properties every registered codec has at its default options (a new codec is picked up here from the
registry): alone in a chain it round-trips every tensor's name, shape and dtype to finite values (a byte
codec exactly), and its registered chain stage is the role it plays. Per-codec error bounds:
test_comm_codecs.py."""

from __future__ import annotations

import pytest
import torch

from fedmtl import registry
from fedmtl.comm.link import build_link

CODECS = registry.components("codec")
SHAPES = [(37,), (16, 9), (4, 3, 5), (1,), ()]


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(s, generator=g) for i, s in enumerate(SHAPES)}


@pytest.mark.parametrize("component", CODECS, ids=[c.name for c in CODECS])
def test_every_registered_codec_round_trips_alone(component):
    link = build_link([component.config_model()])
    x = _tensors()
    data, state = link.encode(x, {}, torch.Generator().manual_seed(1))
    assert isinstance(data, bytes) and data
    y = link.decode(data, expected={k: v.shape for k, v in x.items()})
    assert set(y) == set(x)
    for k in x:
        assert y[k].shape == x[k].shape and y[k].dtype == x[k].dtype, (component.name, k)
        assert torch.isfinite(y[k]).all(), (component.name, k)
    if component.traits["stage"] == "byte":
        assert all(torch.equal(x[k], y[k]) for k in x)  # a byte codec is lossless


@pytest.mark.parametrize("component", CODECS, ids=[c.name for c in CODECS])
def test_every_registered_codec_declares_its_stage_as_it_is_built(component):
    """The ``stage`` trait (what the config's chain check reads) matches the role of the built object."""
    from fedmtl.comm.codecs import build_codec

    built = build_codec(component.config_model())
    role = "byte" if hasattr(built, "compress") else "sparsifier" if hasattr(built, "select") else "quantiser"
    assert component.traits["stage"] == role
