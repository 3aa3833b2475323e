"""A client's layout: which parameters it holds and which it uploads, computed once per task set.

What a client trains and sends depends on its task set only (and on the model and algorithm, fixed for a
run): every client with the same tasks holds the same parameters and uploads the same names. The round
asks this on every step of a client's path (plan, receive, upload, collect, the Byzantine simulation, the
streamed reduction); :class:`Layouts` answers each task set once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedmtl.data.dataset import ClientData
from fedmtl.fl.algorithm import Algorithm
from fedmtl.fl.client import held_parameter_names
from fedmtl.mtl import MultiTaskModel


@dataclass(frozen=True)
class ClientLayout:
    """The parameters of a client with ``tasks``.

    Attributes:
        held: what it trains, in the model's order: shared, its tasks' own, and local parameters.
        uploaded: what it sends (the algorithm's :meth:`~fedmtl.fl.algorithm.Algorithm.uploaded_names`),
            what the broadcast to it carries, and what its update is checked against.
    """

    tasks: tuple[str, ...]
    held: tuple[str, ...]
    uploaded: tuple[str, ...]


class Layouts:
    """The layouts of a run's clients (one model and algorithm), each task set's computed once, on first use.

    Assumes what :class:`~fedmtl.fl.algorithm.Algorithm` promises: ``uploaded_names`` depends on the client's
    task set only.
    """

    def __init__(self, model: MultiTaskModel, algorithm: Algorithm):
        self.model = model
        self.algorithm = algorithm
        self._by_tasks: dict[tuple[str, ...], ClientLayout] = {}
        self._held: dict[tuple[str, ...], tuple[str, ...]] = {}

    def of(self, client: ClientData) -> ClientLayout:
        """The layout of ``client`` (shared with every client of its task set)."""
        layout = self._by_tasks.get(client.tasks)
        if layout is None:
            layout = self._compute(client)
            self._by_tasks[client.tasks] = layout
        return layout

    def held(self, tasks: Sequence[str]) -> tuple[str, ...]:
        """What a client with ``tasks`` holds (for callers that know the tasks, not a client)."""
        key = tuple(tasks)
        if key not in self._held:
            self._held[key] = tuple(held_parameter_names(self.model, list(key)))
        return self._held[key]

    def _compute(self, client: ClientData) -> ClientLayout:
        return ClientLayout(client.tasks, self.held(client.tasks), tuple(self.algorithm.uploaded_names(self.model, client)))


__all__ = ["ClientLayout", "Layouts"]
