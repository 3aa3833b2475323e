"""metrics.jsonl: a torn last line is dropped, any other damaged line is named and never lost (the file is
set aside byte for byte before it is rewritten)."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.report.metrics_log import MetricsLog, parse_metrics, read_metrics

GOOD = [{"round": 1, "train_loss": 0.5}, {"round": 2, "train_loss": 0.25}, {"round": 3, "train_loss": 0.125}]


def _lines(records) -> bytes:  # type: ignore[no-untyped-def]
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_a_torn_last_line_is_dropped_quietly(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_lines(GOOD[:2]) + b'{"round": 3, "train_lo')
    parsed = parse_metrics(path.read_bytes())
    assert parsed.records == GOOD[:2] and parsed.damaged == [] and parsed.torn
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        MetricsLog(path).truncate_after(5)
    assert path.read_bytes() == _lines(GOOD[:2]) and "partial last line" in caplog.text
    assert list(tmp_path.iterdir()) == [path]  # nothing set aside: a torn write is no damage


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_lines(GOOD[:2]) + json.dumps(GOOD[2]).encode())
    MetricsLog(path).truncate_after(5)
    assert path.read_bytes() == _lines(GOOD)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b'{"round": 2, "train_loss": 0.', "not JSON"),
        (b"[1,2,3]", "a JSON list, not an object"),
        (b'{"round": "abc"}', "'round' is 'abc', not an integer >= 0"),
        (b'{"round": -1}', "'round' is '-1', not an integer >= 0"),
        (b'{"round": true}', "'round' is 'True', not an integer >= 0"),
        (b'{"loss": 1}', "'round' is 'None'"),
        (b'{"round": 2, "name": "\xff\xfe"}', "not UTF-8 (byte 22)"),
        (b"\x00\x00\x00\x00", "not JSON"),
    ],
    ids=["torn-middle", "list", "round-text", "round-negative", "round-bool", "no-round", "latin-1", "zeros"],
)
def test_a_damaged_line_is_named_and_set_aside_byte_for_byte(tmp_path, caplog, bad, reason):
    path = tmp_path / "metrics.jsonl"
    original = _lines(GOOD[:1]) + bad + b"\n" + _lines(GOOD[1:])
    path.write_bytes(original)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert read_metrics(path) == GOOD  # reading names the line and changes nothing
    assert f"line 2: {reason}" in caplog.text and path.read_bytes() == original
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        MetricsLog(path).truncate_after(2)  # resuming from round 2
    backup = tmp_path / "metrics.jsonl.damaged-1"
    assert backup.read_bytes() == original
    assert path.read_bytes() == _lines(GOOD[:2])
    assert "1 damaged line(s) left out" in caplog.text and str(backup) in caplog.text and f"line 2: {reason}" in caplog.text


def test_each_damage_gets_its_own_backup(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for n in (1, 2):
        path.write_bytes(b"oops\n" + _lines(GOOD))
        MetricsLog(path).truncate_after(3)
        assert (tmp_path / f"metrics.jsonl.damaged-{n}").read_bytes() == b"oops\n" + _lines(GOOD)
    assert path.read_bytes() == _lines(GOOD)


def test_stale_temp_files_beside_the_log_are_removed_at_start(tmp_path):
    path = tmp_path / "metrics.jsonl"
    stale = tmp_path / ".metrics.jsonl.tmp-999999999"
    stale.write_text("half")
    MetricsLog(path).truncate_after(0)
    assert not stale.exists() and path.read_bytes() == b""


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(st.fixed_dictionaries({"round": st.integers(0, 100), "x": st.floats(allow_nan=False)}), max_size=6),
    noise=st.lists(st.tuples(st.integers(0, 6), st.binary(min_size=1, max_size=12)), max_size=3),
    cut=st.integers(0, 40),
)
def test_fuzzed_files_lose_no_record_silently(records, noise, cut):
    """Good records always come back; every other line is either reported by number or the torn tail."""
    lines = [json.dumps(r).encode() for r in records]
    for at, junk in noise:
        lines.insert(min(at, len(lines)), junk.replace(b"\n", b" "))
    raw = b"\n".join(lines) + b"\n"
    raw = raw[: len(raw) - cut] if cut < len(raw) else raw
    parsed = parse_metrics(raw)
    kept_lines = raw.split(b"\n")
    reported = {n for n, _ in parsed.damaged}
    good = 0
    for i, line in enumerate(kept_lines):
        if not line.strip():
            continue
        is_record = False
        try:
            value = json.loads(line.decode("utf-8"))
            is_record = isinstance(value, dict) and type(value.get("round")) is int and value["round"] >= 0
        except (UnicodeDecodeError, ValueError):
            pass
        if is_record:
            good += 1
        else:
            assert (i + 1) in reported or (i == len(kept_lines) - 1 and parsed.torn)
    assert len(parsed.records) == good
