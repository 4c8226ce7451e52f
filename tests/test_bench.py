"""`sana bench`: its FLOP count (checked against the published anchor) and its refusal without a GPU."""

import pytest
import torch

from sana.benchmark import dit_flops
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
