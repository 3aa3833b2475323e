"""A client's state between its rounds: one tensor sub-tree per owner.

Several components keep state on a client, and each reads and writes only its own slot:

============  ==========================================================================  =====================================
slot          what it holds                                                               owner (the one that writes it)
============  ==========================================================================  =====================================
objective     the multi-task objective's state (scheme and balancer: DWA's losses, ...)   the local trainer
local         the values of the model's ``local`` parameters (never federated)            the local trainer
buffers       the client's own BatchNorm running statistics (FedBN)                       the local trainer
privacy       DP-SGD's accounting history (``dp_sgd_history``)                            DP-SGD's trainer
algorithm     what the algorithm keeps (SCAFFOLD's ``c_i``, Ditto's ``v_k``, FedEM's ...)  the :class:`~fedmtl.fl.algorithm.Algorithm`
codec         uplink error-feedback residuals, the outbox's, the downlink copy, EF21's g  the client node (:mod:`fedmtl.fl.node`)
============  ==========================================================================  =====================================

``server`` is not state: it is the client's decoded view of the algorithm's server state for the round
(SCAFFOLD's ``c``, IFCA's clusters), set by the round for the algorithm to read, never persisted.

Each slot is a tensor tree, so a whole state is one (:meth:`ClientState.to_tree`, the layout checkpoints
store since checkpoint format 2). The older, flat layout (every owner's keys side by side: ``objective``,
``local``, ``personal``, ``scaffold_c``, ``codec``, ``downlink_copy``, ...) is converted on load
(:meth:`ClientState.from_legacy`), so runs checkpointed before still resume exactly.
Like optax's states (``optax.partition``), each owner's state is explicit and travels with its owner's
code; no component reaches into another's keys. A new component that keeps state on a client adds its own
slot here (with its place in :meth:`ClientState.over` and :data:`SLOTS`), never a key in another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from torch import Tensor

from fedmtl.tree import TensorTree

#: the persisted slots, in the order :meth:`ClientState.to_tree` writes them
SLOTS = ("objective", "local", "buffers", "privacy", "algorithm", "codec")
#: slots that training returns whole (a result that has one replaces the client's; see :meth:`ClientState.over`)
_WHOLE = ("objective", "local", "buffers")

#: the codec slot's parts (the client node's): uplink residuals, the outbox chain's, the last downlink copy,
#: the EF21 estimate of the client's update (``comm.uplink_ef21``, :mod:`fedmtl.comm.ef21`)
UPLINK, OUTBOX, DOWNLINK_COPY, UPLINK_ESTIMATE = "uplink", "outbox", "downlink_copy", "uplink_estimate"
#: the privacy slot's part: DP-SGD's accountant history
DP_SGD_HISTORY = "dp_sgd_history"

#: flat (format 1) keys -> (slot, key in it); None: the whole slot. Every other flat key was the algorithm's.
_LEGACY: dict[str, tuple[str, str | None]] = {
    "objective": ("objective", None),
    "local": ("local", None),
    "buffers": ("buffers", None),
    "dp_sgd_history": ("privacy", DP_SGD_HISTORY),
    "codec": ("codec", UPLINK),
    "codec_outbox": ("codec", OUTBOX),
    "downlink_copy": ("codec", DOWNLINK_COPY),
}


def _tree() -> TensorTree:
    return {}


@dataclass(frozen=True)
class ClientState:
    """A client's state, one tensor tree per owner (see the module's table).

    Frozen: an owner returns a new state with its slot replaced (:meth:`with_algorithm`,
    :meth:`with_codec`, :meth:`with_privacy`, :meth:`with_training`), never edits another's.
    """

    objective: TensorTree = field(default_factory=_tree)
    local: dict[str, Tensor] = field(default_factory=dict)
    buffers: dict[str, Tensor] = field(default_factory=dict)
    privacy: TensorTree = field(default_factory=_tree)
    algorithm: TensorTree = field(default_factory=_tree)
    codec: TensorTree = field(default_factory=_tree)
    #: the round's decoded view of the algorithm's server state (not persisted)
    server: TensorTree = field(default_factory=_tree, compare=False)

    # -- each owner's writes ---------------------------------------------------------------------
    def with_algorithm(self, tree: Mapping[str, object]) -> ClientState:
        """This state with the algorithm's slot replaced."""
        return replace(self, algorithm=dict(tree))

    def with_codec(self, tree: Mapping[str, object]) -> ClientState:
        """This state with the client node's codec slot replaced."""
        return replace(self, codec=dict(tree))

    def with_privacy(self, tree: Mapping[str, object]) -> ClientState:
        """This state with the privacy slot replaced."""
        return replace(self, privacy=dict(tree))

    def with_server(self, server: Mapping[str, object] | None) -> ClientState:
        """This state with the round's view of the algorithm's server state (unchanged without one)."""
        return replace(self, server=dict(server)) if server else self

    def without_server(self) -> ClientState:
        """This state without the round's server view (what a client keeps)."""
        return replace(self, server={}) if self.server else self

    def training(self) -> ClientState:
        """Only what the local trainer reads (objective, local parameters, buffers, privacy): the state an
        algorithm hands the trainer for a parameter set of its own."""
        return ClientState(objective=self.objective, local=self.local, buffers=self.buffers, privacy=self.privacy)

    def over(self, prior: ClientState) -> ClientState:
        """What training returned (``self``) laid over the client's ``prior`` state: the client's next state.

        A slot training did not fill keeps the prior's; the objective, local parameters and buffers are
        replaced whole when returned, the algorithm's and privacy slots key by key (an algorithm may
        return only what it changed). The codec slot is the node's: it is kept from the prior. The
        server view is dropped.
        """
        merged = {s: getattr(self, s) or getattr(prior, s) for s in _WHOLE}
        return ClientState(
            **merged,
            privacy={**prior.privacy, **self.privacy},
            algorithm={**prior.algorithm, **self.algorithm},
            codec=prior.codec,
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def to_tree(self) -> TensorTree:
        """The persisted slots as one tensor tree (empty slots left out; the server view never stored)."""
        return {s: getattr(self, s) for s in SLOTS if getattr(self, s)}

    @classmethod
    def from_tree(cls, tree: Mapping[str, object]) -> ClientState:
        """Inverse of :meth:`to_tree`; a key that is no slot is refused, naming it."""
        unknown = sorted(set(tree) - set(SLOTS))
        if unknown:
            raise ValueError(f"client state has unknown parts {unknown}; expected some of {list(SLOTS)}")
        bad = [k for k, v in tree.items() if not isinstance(v, Mapping)]
        if bad:
            raise ValueError(f"client state part {bad[0]!r} is a {type(tree[bad[0]]).__name__}, expected a tensor tree")
        return cls(**{k: dict(v) for k, v in tree.items() if isinstance(v, Mapping)})

    @classmethod
    def from_legacy(cls, tree: Mapping[str, object]) -> ClientState:
        """A client state from the flat layout of checkpoint format 1 (every owner's keys side by side)."""
        slots: dict[str, TensorTree] = {s: {} for s in SLOTS}
        for key, value in tree.items():
            slot, part = _LEGACY.get(key, ("algorithm", key))
            if part is None:
                if not isinstance(value, Mapping):
                    raise ValueError(f"client state entry {key!r} is a {type(value).__name__}, expected a tensor tree")
                slots[slot] = dict(value)
            else:
                slots[slot][part] = value
        return cls(**slots)


def client_states_from_tree(tree: Mapping[str, object], legacy: bool = False) -> dict[int, ClientState]:
    """``{"<client id>": state tree}`` (a checkpoint's ``clients``) -> client id -> state;
    ``legacy``: the trees have format 1's flat layout."""
    read = ClientState.from_legacy if legacy else ClientState.from_tree
    out = {}
    for key, value in tree.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"client {key!r}'s state is a {type(value).__name__}, expected a tensor tree")
        out[int(key)] = read(value)
    return out


def client_states_to_tree(states: Mapping[int, ClientState]) -> TensorTree:
    """Inverse of :func:`client_states_from_tree` (current format)."""
    return {str(k): v.to_tree() for k, v in states.items()}


__all__ = [
    "DOWNLINK_COPY",
    "DP_SGD_HISTORY",
    "OUTBOX",
    "SLOTS",
    "UPLINK",
    "UPLINK_ESTIMATE",
    "ClientState",
    "client_states_from_tree",
    "client_states_to_tree",
]
