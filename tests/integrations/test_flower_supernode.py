"""The SuperNode launcher caps Flower's fixed idle waits; everything else goes to flower-supernode unchanged."""

from __future__ import annotations

import pytest

from fedmtl.integrations.flower import supernode

pytestmark = pytest.mark.flower


@pytest.mark.parametrize(
    ("argv", "cap", "rest"),
    [
        (["--insecure", "--idle-poll", "0.2", "--port", "9"], 0.2, ["--insecure", "--port", "9"]),
        (["--idle-poll=1.5", "--insecure"], 1.5, ["--insecure"]),
        (["--insecure"], None, ["--insecure"]),
    ],
)
def test_idle_poll_is_taken_out_of_the_supernode_arguments(argv, cap, rest):
    assert supernode.split_idle_poll(argv) == (cap, rest)


@pytest.mark.parametrize(("argv", "message"), [(["--idle-poll"], "needs a number"), (["--idle-poll", "soon"], "'soon'")])
def test_a_bad_idle_poll_is_named(argv, message):
    with pytest.raises(ValueError, match=message):
        supernode.split_idle_poll(argv)


def test_capped_sleep_waits_at_most_the_cap_and_keeps_the_rest_of_time():
    slept: list[float] = []
    clock = supernode.capped_time(0.2, slept.append)
    clock.sleep(3)
    clock.sleep(0.05)
    assert slept == [0.2, 0.05]
    assert clock.monotonic() > 0
    with pytest.raises(ValueError, match="> 0"):
        supernode.capped_time(0.0)


def test_another_flower_version_is_refused(monkeypatch):
    import flwr

    monkeypatch.setattr(flwr, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="flwr==1.41.0"):
        supernode.patch_idle_wait(0.2)
