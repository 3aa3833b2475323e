"""Flower tests need the flower extra; messages built outside Flower's processes need a task identity."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="needs the flower extra: pip install 'fedmtl[flower]'")

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower sets these in its own processes; tests that build messages need them too."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(autouse=True)
def _node_state(tmp_path, monkeypatch):
    """Each test's nodes keep their client state in a folder of their own (never an earlier test's)."""
    monkeypatch.setenv("FEDMTL_FLOWER_STATE", str(tmp_path / "node-state"))


@pytest.fixture(scope="session")
def _partition_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("partition-cache")


@pytest.fixture
def shared_partition_cache(_partition_cache_dir, monkeypatch):
    """Nodes cache their partition; tests that ask for this share one cache and save rebuilding the data."""
    monkeypatch.setenv("FEDMTL_FLOWER_CACHE", str(_partition_cache_dir))
