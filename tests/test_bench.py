"""`sana bench`: its FLOP count (checked against the published anchor) and its refusal without a GPU."""

import pytest
import torch

from sana.benchmarks.image import dit_flops
from sana.registry import get_spec
from tests.cli_helpers import assert_one_line_error, run_sana


def test_flops_of_the_1_6b_forward_match_the_anchor():
    cfg = get_spec("sana-1.6b").transformer
    # 1024 px, batch 2, 300 text tokens: 5.93 TFLOP; 4096 px: 91.1 TFLOP (shared/reference anchors)
    assert dit_flops(cfg, 32 * 32, 300, 2) / 1e12 == pytest.approx(5.93, rel=0.01)
    assert dit_flops(cfg, 128 * 128, 300, 2) / 1e12 == pytest.approx(91.1, rel=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_without_a_gpu_is_one_line():
    assert "CUDA GPU" in assert_one_line_error(run_sana("bench", "--no-kernels"))


def test_clip_bench_compiles_diffusers_both_ways_it_offers():
    """The clip bench's two compiled forms of a diffusers model: the whole forward, and regional compilation,
    which compiles every repeated block in place (lazily: nothing compiles until a call); the faster that finished
    is the one 'ours / compiled' is against."""
    from sana.benchmarks.clip_dit import COMPILE_FORMS, ClipDitRow, _compile, compiled_name
    from tests.tiny_world import build_reference

    ref = build_reference()
    blocks = [m for m in ref.modules() if type(m).__name__ in ref._repeated_blocks]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is None for b in blocks)
    assert _compile(ref, "regional") is ref
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert _compile(torch.nn.Linear(2, 2), "whole") is not None
    with pytest.raises(ValueError, match="unknown compile form"):
        _compile(ref, "partial")
    assert [compiled_name(how) for how in COMPILE_FORMS] == ["diffusers+compile (regional)", "diffusers+compile"]
    row = ClipDitRow("wm", 161, 1280, 704, 2, (21, 22, 40), 1.0)
    assert row.best_compiled() is None
    row.ms.update({"diffusers": 3.0, "diffusers+compile (regional)": 2.0, "diffusers+compile": 2.5})
    assert row.best_compiled() == 2.0


def test_the_best_forward_is_the_same_work_as_diffusers():
    """The steps that make the text's keys and values once (and keep only a short prompt's) are shown beside our
    forwards, never as the best one: the forward's ratio and TFLOP/s compare the same work."""
    from sana.benchmarks.image import STEP, STEP_PROMPT, STEP_TEXT_KERNEL, DitRow

    row = DitRow("sana-1.6b", 1024, 2, 30.0, ms={"diffusers": 20.0, "ours, kernels": 14.0,
                                                  "ours, kernels+graph": 13.0, STEP: 12.5, "ours, fp8+graph": 11.0,
                                                  STEP_TEXT_KERNEL: 12.0, STEP_PROMPT: 11.5})
    assert row.best_bf16() == 13.0


def test_interleaved_timing_takes_turns_and_the_median_of_rounds(monkeypatch):
    import sana.benchmarks.image as benchmark

    calls = []
    drift = iter([10.0, 20.0, 11.0, 21.0, 30.0, 22.0])  # one slow round of A: the median ignores it

    def fake_median(fn):
        calls.append(fn())
        return next(drift)

    monkeypatch.setattr(benchmark, "_median_ms", fake_median)
    result = benchmark.interleaved_ms({"a": lambda: "a", "b": lambda: "b"}, rounds=3)
    assert calls == ["a", "b"] * 3 and result == {"a": 11.0, "b": 21.0}
