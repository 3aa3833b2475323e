"""The algorithm's own channel: its server state down to each client and each client's outbox up, as
payloads encoded by the same codec chains as the model.

SCAFFOLD's control variates double the traffic of a round, IFCA sends ``k`` models down and FedEM
``K - 1`` components both ways. Left outside the codecs they would be neither compressed nor counted;
here they are tensor trees flattened to ``a/b/name`` and framed, compressed and checked by the link
like any update, and their bytes are part of ``bytes_down`` / ``bytes_up``.

A client receives only the parts of the server state it can use: leaves named after a model parameter
it does not hold (another task's head in IFCA's clusters, say) are left out of its view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedmtl.comm import Link, PayloadError
from fedmtl.comm.link import Spec
from fedmtl.tree import SEP, TensorTree, flatten, unflatten


def leaf_name(path: str) -> str:
    """The last component of a flattened path: ``clusters/0/trunk.0.weight`` -> ``trunk.0.weight``."""
    return path.rsplit(SEP, 1)[-1]


def state_view(state: TensorTree, params: Mapping[str, Tensor], held: set[str]) -> dict[str, Tensor]:
    """The flattened server state a client with parameters ``held`` needs: every leaf except those named
    after a model parameter (``params``) that the client does not hold."""
    return {p: t for p, t in flatten(state).items() if leaf_name(p) not in params or leaf_name(p) in held}


def encode_tree(link: Link, tree: Mapping[str, Tensor], codec_state: TensorTree | None, generator: torch.Generator) -> tuple[bytes, TensorTree]:
    """A flattened tree as a payload (``b""`` for an empty tree) and the sender's next codec state."""
    if not tree:
        return b"", dict(codec_state or {})
    return link.encode(tree, codec_state or {}, generator)


def decode_state(link: Link, payload: bytes) -> TensorTree:
    """A client's view of the server state from its payload (``{}`` for ``b""``); raises PayloadError."""
    return unflatten(link.decode(payload)) if payload else {}


def decode_outbox(
    link: Link, payload: bytes, shapes: Mapping[str, Spec], max_numel: int | None = None, max_tensors: int | None = None
) -> TensorTree:
    """A client's outbox from its payload, checked from the payload's header before anything is decoded:
    every leaf must be named after a model parameter or one of the algorithm's own tensors (``shapes``:
    name -> shape) and have its shape; the outbox holds at most ``max_tensors`` leaves and ``max_numel``
    entries in all (defaults: ``shapes``' count and total size, as if each name appeared once).

    Raises:
        PayloadError: naming the first leaf that does not fit, or the bound exceeded.
    """
    if not payload:
        return {}

    def spec(path: str) -> Spec:
        name = leaf_name(path)
        if name not in shapes:
            raise PayloadError(f"outbox entry {path[:80]!r} is not named after a model parameter")
        return shapes[name]

    if max_numel is None:
        max_numel = sum(math.prod(s.shape if isinstance(s, Tensor) else s) for s in shapes.values())
    return unflatten(link.decode(payload, spec, max_numel=max_numel, max_tensors=max_tensors or len(shapes)))


def nest_names(state: Mapping[str, object]) -> TensorTree:
    """A link's state over flattened names (an outbox's ``delta_c/<param>``: its error-feedback residuals, its
    codecs' memory) as a tensor tree a checkpoint can store, each name's path nested (tree keys hold no ``/``)."""
    out: TensorTree = {}
    for key, per_name in state.items():
        if not isinstance(per_name, Mapping):
            out[key] = per_name
            continue
        nested: TensorTree = {}
        for name, value in per_name.items():
            *parents, last = name.split(SEP)
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        out[key] = nested
    return out


def unnest_names(tree: Mapping[str, object], names: Sequence[str]) -> TensorTree:
    """Inverse of :func:`nest_names` for the ``names`` the link encodes now (an entry for another name is dropped:
    a client's outbox holds the same names every round)."""
    out: TensorTree = {}
    for key, nested in tree.items():
        if not isinstance(nested, Mapping):
            out[key] = nested
            continue
        per_name: dict[str, object] = {}
        for name in names:
            node: object = nested
            for part in name.split(SEP):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                per_name[name] = node
        out[key] = per_name
    return out


def outbox_bound(server_state: TensorTree, sent: Mapping[str, Spec]) -> tuple[int, int]:
    """``(max_numel, max_tensors)`` of an outbox: no larger than the algorithm's server state plus one copy of
    what the client may send (``sent``: its parameters and the algorithm's own tensors). SCAFFOLD's
    ``delta_c`` mirrors ``c``; FedEM's ``K - 1`` components and gate mirror the server's."""
    leaves = flatten(server_state)
    numel = sum(t.numel() for t in leaves.values()) + sum(math.prod(s.shape if isinstance(s, Tensor) else s) for s in sent.values())
    return numel, len(leaves) + len(sent)
