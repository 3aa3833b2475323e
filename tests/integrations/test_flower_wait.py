"""The real-process tests wait on events with a silence budget stretched by the machine's load, never a fixed clock."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fedmtl.integrations.flower import launch

pytestmark = pytest.mark.flower


def test_slowness_is_the_run_queue_per_core_and_never_below_one(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * cores, 0.0, 0.0))
    assert launch.machine_slowness() == pytest.approx(3.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert launch.machine_slowness() == 1.0


def test_a_wait_outlasts_its_quiet_budget_while_files_keep_growing(tmp_path, monkeypatch):
    """Writes every 0.05 s for 0.6 s keep a 0.3 s quiet budget alive; the event then ends the wait."""
    monkeypatch.setattr(launch, "machine_slowness", lambda: 1.0)
    done = threading.Event()

    def work() -> None:
        with open(tmp_path / "log", "a") as fh:
            for _ in range(12):
                fh.write("x")
                fh.flush()
                time.sleep(0.05)
        done.set()

    t0 = time.monotonic()
    threading.Thread(target=work).start()
    assert launch.wait_until(done.is_set, quiet=0.3, watch=tmp_path, poll=0.01)
    assert time.monotonic() - t0 >= 0.55


def test_a_silent_wait_gives_up_after_quiet_times_slowness(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "machine_slowness", lambda: 2.0)
    t0 = time.monotonic()
    assert not launch.wait_until(lambda: False, quiet=0.1, watch=tmp_path, poll=0.01)
    assert time.monotonic() - t0 >= 0.2


def test_a_run_that_ended_without_the_event_stops_the_wait_at_once(tmp_path, monkeypatch):
    """A ServerApp that failed (bad config, crash) is reported by Flower as finished: no need to wait for silence."""
    monkeypatch.setattr(launch, "machine_slowness", lambda: 1.0)
    asked: list[float] = []

    def ended() -> str:
        asked.append(time.monotonic())
        return "finished:failed: ServerApp failed with exception" if len(asked) >= 2 else ""

    t0 = time.monotonic()
    assert not launch.wait_until(lambda: False, quiet=60.0, watch=tmp_path, poll=0.01, ended=ended, check_every=0.05)
    assert len(asked) == 2 and time.monotonic() - t0 < 30.0
