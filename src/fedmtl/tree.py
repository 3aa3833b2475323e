"""Nested dicts of tensors ("tensor trees"): the one shape every piece of state takes.

Balancer, codec, server-optimiser and client states are all tensor trees, so a checkpoint can
store any of them with safetensors by flattening the keys to ``a/b/c``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

#: a nested dict whose leaves are tensors (typed loosely: mypy's recursive unions make every access a cast)
TensorTree = dict[str, Any]
SEP = "/"


def flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, Tensor]:
    """``{"a": {"b": t}}`` -> ``{"a/b": t}``. Keys may not contain the separator."""
    out: dict[str, Tensor] = {}
    for key, value in tree.items():
        if SEP in key:
            raise ValueError(f"state key {key!r} may not contain {SEP!r}")
        path = f"{prefix}{key}"
        if isinstance(value, Tensor):
            out[path] = value
        elif isinstance(value, Mapping):
            if not value:
                out[path + SEP] = torch.empty(0)  # keep empty sub-trees
            out.update(flatten(value, path + SEP))
        else:
            raise TypeError(f"state entry {path!r} is {type(value).__name__}, expected a tensor or a dict")
    return out


def unflatten(flat: Mapping[str, Tensor]) -> TensorTree:
    """Inverse of :func:`flatten`."""
    root: TensorTree = {}
    for path, value in flat.items():
        parts = path.split(SEP)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        if parts[-1] != "":
            node[parts[-1]] = value
    return root


def clone(tree: Mapping[str, object]) -> TensorTree:
    """A deep copy with detached, cloned tensors."""
    return unflatten({k: v.detach().clone() for k, v in flatten(tree).items()})


def unshared(flat: dict[str, Tensor]) -> dict[str, Tensor]:
    """``flat`` with every tensor contiguous and no two sharing memory, as safetensors needs (checkpoints,
    wire payloads). It refuses aliased tensors, yet a state may legitimately hold one tensor under two
    names, or views of one buffer; those are copied, the rest passed through as they are."""
    seen: set[int] = set()
    out = {}
    for key, value in flat.items():
        tensor = value.contiguous()
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
        if ptr and ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor
    return out
