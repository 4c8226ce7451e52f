"""The start-up timeline (`sana.trace`): nothing written unless SANA_TRACE names a file; spans end on errors."""

import threading

import pytest

from sana import trace


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(trace.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    trace.mark("event")
    with trace.span("work"):
        pass
    assert list(tmp_path.iterdir()) == []
    assert not trace.enabled()


def test_marks_and_spans_from_threads_read_back_in_order(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(trace.ENV, str(path))
    origin = __import__("time").time()
    trace.mark("start", step=1)
    with pytest.raises(RuntimeError):
        with trace.span("failing"):
            raise RuntimeError("x")
    worker = threading.Thread(target=lambda: trace.mark("from a thread"), name="loader")
    worker.start()
    worker.join()
    events = trace.read(path, origin)
    assert [e["event"] for e in events] == ["start", "failing begin", "failing end", "from a thread"]
    assert events[0]["step"] == 1 and events[-1]["thread"] == "loader"
    assert all(e["s"] >= 0 for e in events)
    text = trace.timeline(events).splitlines()
    assert "failing end" in text[2] and text[2].rstrip().endswith("s)")  # the span's length at its end
    assert "step=1" in text[0]
