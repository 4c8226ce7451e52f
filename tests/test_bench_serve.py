"""`scripts/bench_serve.py`'s CPU dry path (nano, small sizes, few requests): every step of the GPU run (the
sequential ImagePipeline and SanaPipeline, the server subprocess, the first image, the concurrent levels, the
Markdown section) runs, so the script cannot rot while it waits for a GPU."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_serve.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serve"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a server subprocess and two pipelines: about half a minute here
def test_dry_path_writes_the_section(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    markdown = tmp_path / "bench.md"
    markdown.write_text("# Benchmarks\n")
    assert _bench().main(["--device", "cpu", "--model", "nano", "--px", "128", "--steps", "1", "--clients", "1,2",
                          "--requests", "2", "--sequential", "1", "--steady", "1", "--markdown", str(markdown)]) == 0

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\n## ") and "`sana serve` under concurrent clients (CPU" in text
    rows = re.findall(r"^\| (ImagePipeline, sequential|SanaPipeline \(diffusers\), sequential|sana serve) \| (\d+) \| "
                      r"(\d+) \| ([\d.]+) \|", text, re.M)
    assert [(run, clients, requests) for run, clients, requests, _ in rows] == [
        ("ImagePipeline, sequential", "1", "1"), ("SanaPipeline (diffusers), sequential", "1", "1"),
        ("sana serve", "1", "2"), ("sana serve", "2", "2")]
    assert all(float(ips) > 0 for *_, ips in rows)
    assert re.search(r"^Warm server: first image [\d.]+ s, steady state [\d.]+ s", text, re.M)
    assert re.search(r"^2 clients: [\d.]+x sequential ImagePipeline", text, re.M)


def test_percentiles_and_rows():
    bench = _bench()
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    row = bench.Row("sana serve", 4, latencies=[1.0, 1.0, 1.0, 1.0], wall=2.0)
    assert row.images_per_second == 2.0
