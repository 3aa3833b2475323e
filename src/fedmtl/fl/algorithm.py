"""An algorithm's client side: how a client trains, what it uploads, which model it keeps for itself.

FedAvg trains the global model on the client's tasks, uploads every held parameter's delta and
uses the global model (with any ``local`` parameters it keeps) as its personalised model.
Personalisation methods change exactly these three answers. Methods that also keep server-side
state (SCAFFOLD's control variate, IFCA's cluster models, FedEM's components, MOCHA's Omega) add
the optional server hooks :meth:`Algorithm.server_init` and :meth:`Algorithm.server_update`.

What an algorithm keeps on a client between rounds lives in its own slot of the client's state,
:attr:`ClientState.algorithm <fedmtl.fl.client_state.ClientState>`; the trainer's slots (objective state,
``local`` parameters, buffers) are the trainer's, read and written by :class:`LocalTrainer`.

How server state reaches the client and extra uploads reach the server:

- during a round (and at personalised evaluation), a client's state holds its decoded view of the
  server's algorithm state in :attr:`ClientState.server` (never persisted);
- a client may return extra uploads in :attr:`LocalResult.outbox`, a tree whose leaves are
  named after model parameters or after one of the algorithm's own tensors (:meth:`Algorithm.outbox_shapes`:
  FedEM's gate); the client node encodes them into the reply, the server decodes and checks them
  (name and shape) and hands them to :meth:`Algorithm.server_update` (``ServerContext.outboxes``).

Both channels go through the same codec chains as the model (:mod:`fedmtl.fl.algorithm_channel`) and
are counted in ``bytes_down`` / ``bytes_up`` (broken out as ``algorithm_bytes_*``), in simulation and
on Flower alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fedmtl import registry
from fedmtl.config import algorithm as acfg
from fedmtl.data.dataset import ClientData
from fedmtl.fl.client import LocalResult, LocalTrainer, held_parameter_names
from fedmtl.fl.client_state import ClientState
from fedmtl.fl.update import ClientUpdate
from fedmtl.mtl import LOCAL, MultiTaskModel
from fedmtl.registry import register
from fedmtl.tasks import Task
from fedmtl.tree import TensorTree


@dataclass(frozen=True)
class ServerContext:
    """What an algorithm's server step sees after the round's standard aggregation.

    Attributes:
        before: the global parameters broadcast this round (what client deltas are relative to).
        after: the global parameters after aggregation and the server optimiser's step.
        state: the algorithm's server state before this round.
        updates: the decoded client updates.
        outboxes: client id -> extra uploads that client returned (:attr:`LocalResult.outbox`).
        groups: parameter group -> names (shared and task groups; never ``local``).
        population: parameter name -> how many clients of the federation upload it.
    """

    before: Mapping[str, Tensor]
    after: Mapping[str, Tensor]
    state: TensorTree
    updates: Sequence[ClientUpdate]
    outboxes: Mapping[int, TensorTree] = field(default_factory=dict)
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    population: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Mixture:
    """A personalised predictor that mixes the predictions of several parameter sets (FedEM):
    ``p(y | x) = sum_k w_k(x) p_k(y | x)``.

    Attributes:
        components: the K parameter sets, each a full set of the model's parameters.
        weights: inputs ``x`` (``[n, ...]``) -> their mixture weights ``[n, K]``, each row summing to 1;
            the same row for every input in FedEM as published, input-dependent with its gate.
    """

    components: list[dict[str, Tensor]]
    weights: Callable[[Tensor], Tensor]


class Algorithm(Protocol):
    """Client-side behaviour of a federated algorithm, plus optional server-side state."""

    name: str

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult: ...

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]:
        """The parameters ``client`` sends (and receives), in the model's order; a function of its task set
        only (:class:`~fedmtl.fl.layout.Layouts` asks once per task set)."""
        ...

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> dict[str, Tensor]: ...

    def personal_mixture(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> Mixture | None: ...

    def outbox_shapes(self) -> dict[str, torch.Size]: ...

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree: ...

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]: ...


class FedAvg:
    """McMahan et al. (2017): local SGD from the global model, every held parameter uploaded.

    Also the base of the other algorithms: it supplies the default answers and the no-op server hooks.
    """

    name = "fedavg"

    def local_train(
        self, trainer: LocalTrainer, start: Mapping[str, Tensor], client: ClientData, state: ClientState, generator: torch.Generator
    ) -> LocalResult:
        return trainer.train(start, client, without_server(state), generator)

    def uploaded_names(self, model: MultiTaskModel, client: ClientData) -> list[str]:
        return [n for n in held_parameter_names(model, client.tasks) if model.group_of(n) != LOCAL]

    def personal_params(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> dict[str, Tensor]:
        """The global model with the client's own parameters over it: its ``local`` ones, then the
        ``personal`` copies a method keeps (FedPer's heads, Ditto's v_k, pFedMe's theta, ...)."""
        return {**global_params, **state.local, **state.algorithm.get("personal", {})}

    def personal_mixture(
        self, model: MultiTaskModel, global_params: Mapping[str, Tensor], client: ClientData, state: ClientState
    ) -> Mixture | None:
        """A mixture of models whose predictions are averaged (FedEM); None: use :meth:`personal_params`."""
        return None

    def outbox_shapes(self) -> dict[str, torch.Size]:
        """Name -> shape of the outbox leaves that are not model parameters (FedEM's gate, its mixture
        weights), so that the server can check them like the rest of an upload (none for FedAvg)."""
        return {}

    def server_init(self, params: Mapping[str, Tensor], num_clients: int, generator: torch.Generator) -> TensorTree:
        """The algorithm's initial server state (none for FedAvg)."""
        return {}

    def server_update(self, ctx: ServerContext) -> tuple[dict[str, Tensor], TensorTree]:
        """The global parameters and server state after the round (FedAvg: unchanged)."""
        return dict(ctx.after), ctx.state


def with_server(state: ClientState, server: TensorTree | None) -> ClientState:
    """A client's state with its decoded view of the algorithm's server state (unchanged without one)."""
    return state.with_server(server)


def without_server(state: ClientState) -> ClientState:
    """The client's own state, without the server broadcast the round adds to it."""
    return state.without_server()


#: builds a model of the experiment's architecture (its config and input shape) for other tasks: FedEM's gate
ModelBuilder = Callable[[Sequence[Task]], MultiTaskModel]


def build_algorithm(cfg: object, make_model: ModelBuilder | None = None) -> Algorithm:
    """The algorithm an ``algorithm`` config describes.

    ``make_model`` builds models of the experiment's architecture; only methods that train a network
    of their own next to the model need it (FedEM's gate), and they say so when it is missing.
    """
    algorithm: Algorithm = registry.build("algorithm", cfg, make_model)
    return algorithm


register("algorithm", "fedavg", lambda cfg, make_model: FedAvg(), acfg.FedAvgAlgorithm)
