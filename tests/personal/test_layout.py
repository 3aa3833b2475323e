"""A client's layout (held and uploaded names) is its task set's, computed once per task set."""

from __future__ import annotations

import pytest

from fedmtl.fl.client import held_parameter_names
from fedmtl.mtl import LOCAL, SHARED

from .conftest import config, federation


@pytest.mark.parametrize("name", ["fedavg", "fedper"])
def test_a_layout_is_the_task_sets_and_the_algorithms_answer(name: str) -> None:
    fed = federation(config({"name": name}))
    by_hand = {c.tasks: [n for n, _ in fed.model.named_parameters() if fed.model.group_of(n) in {SHARED, LOCAL} | {f"task:{t}" for t in c.tasks}] for c in fed.data.clients}
    for client in fed.data.clients:
        layout = fed.layouts.of(client)
        assert list(layout.held) == by_hand[client.tasks] == held_parameter_names(fed.model, client.tasks)
        assert list(layout.uploaded) == fed.algorithm.uploaded_names(fed.model, client)
    a0, a1, b2, ab4 = (fed.layouts.of(fed.data.clients[c]) for c in (0, 1, 2, 4))
    assert a0 is a1 and a0 is not b2 and a0 is not ab4  # clients 0 and 1 hold task a alone
    if name == "fedper":
        assert not any(n.startswith("heads.") for n in ab4.uploaded) and any(n.startswith("heads.") for n in ab4.held)


def test_rounds_ask_the_algorithm_once_per_task_set(monkeypatch: pytest.MonkeyPatch) -> None:
    fed = federation(config({"name": "fedavg"}))
    asked: list[tuple[str, ...]] = []
    answer = fed.algorithm.uploaded_names

    def counted(model, client):  # type: ignore[no-untyped-def]
        asked.append(client.tasks)
        return answer(model, client)

    monkeypatch.setattr(fed.algorithm, "uploaded_names", counted)
    fed.layouts._by_tasks.clear()  # as a fresh run (the population was counted at construction)
    state = fed.init_state()
    for _ in range(2):
        state, report = fed.round(state)
        assert not report.dropped
    assert sorted(asked) == sorted({c.tasks for c in fed.data.clients})  # 3 task sets, 6 clients, 2 rounds


def test_held_names_are_a_fresh_list_each_call() -> None:
    fed = federation(config())
    names = held_parameter_names(fed.model, ("a",))
    names.clear()
    assert held_parameter_names(fed.model, ("a",)) == list(fed.layouts.held(("a",))) != []
