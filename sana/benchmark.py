"""DiT forward benchmarks at the real SANA configs (random weights): our engine against diffusers, eager and
compiled, measured in one process on one GPU.

Used by `sana bench`; nothing here prints: rows go back to the caller.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import SanaError

BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def dit_flops(cfg: dict, tokens: int, text_tokens: int, batch: int) -> float:
    """Matmul FLOPs (2 x MACs) of one DiT forward; the same count for every implementation."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    dc = cfg["num_cross_attention_heads"] * cfg["cross_attention_head_dim"]
    hidden = int(cfg["mlp_ratio"] * d)
    hd = cfg["attention_head_dim"]
    per_token = (
        4 * d * d  # qkv + out projection
        + 4 * cfg["num_attention_heads"] * hd * hd  # K^T V and q (K^T V)
        + 2 * d * dc  # cross-attention q + out
        + 2 * text_tokens * dc  # cross-attention scores and values
        + 3 * d * hidden + 18 * hidden  # Mix-FFN 1x1 convs and the depthwise 3x3
    )
    text = text_tokens * (cfg["caption_channels"] * d + d * d + cfg["num_layers"] * 2 * d * dc)
    return 2.0 * batch * (tokens * per_token * cfg["num_layers"] + text)


def bf16_peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


@dataclass
class DitRow:
    model: str
    px: int
    batch: int
    tflop: float
    ms: dict[str, float] = field(default_factory=dict)  # implementation -> median ms
    first_call_s: dict[str, float] = field(default_factory=dict)  # implementation -> seconds of the first call


def _median_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    with torch.no_grad():
        return triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median")


def _first_call(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_dit(name: str, sizes: list[int], *, batch: int, compiled: bool,
              on_row: Callable[[DitRow], None] | None = None) -> list[DitRow]:
    """Time one registry model's DiT at each size: diffusers eager (and torch.compile), ours (PyTorch ops,
    Triton kernels, kernels + CUDA graph)."""
    from diffusers import SanaTransformer2DModel

    from . import ops
    from .graphs import GraphedForward
    from .loading import load_transformer
    from .registry import get_spec

    if not torch.cuda.is_available():
        raise SanaError("sana bench needs a CUDA GPU")
    spec = get_spec(name)
    if not spec.is_image:
        raise SanaError(f"{name} is a {spec.family} model", "sana bench measures the image DiTs")
    cfg = {k: v for k, v in spec.transformer.items() if not k.startswith("_")}
    torch.manual_seed(0)
    ref = SanaTransformer2DModel(**cfg).to("cuda", torch.bfloat16).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "transformer")
        ours = load_transformer(Path(tmp), dtype=torch.bfloat16, device="cuda")
    compiled_ref = torch.compile(ref) if compiled else None
    rows = []
    for px in sizes:
        side = px // 32
        x = torch.randn(batch, 32, side, side, device="cuda", dtype=torch.bfloat16)
        text = torch.randn(batch, 300, 2304, device="cuda", dtype=torch.bfloat16)
        mask = torch.ones(batch, 300, device="cuda", dtype=torch.long)
        t = torch.full((batch,), 500.0, device="cuda")
        g = torch.full((batch,), 0.45, device="cuda", dtype=torch.bfloat16) if cfg.get("guidance_embeds") else None
        row = DitRow(name, px, batch, dit_flops(cfg, side * side, 300, batch) / 1e12)

        def diffusers_forward(model=ref):
            return model(x, encoder_hidden_states=text, timestep=t, guidance=g, encoder_attention_mask=mask,
                         return_dict=False)

        row.ms["diffusers"] = _median_ms(diffusers_forward)
        if compiled_ref is not None:
            row.first_call_s["diffusers+compile"] = _first_call(lambda: diffusers_forward(compiled_ref))
            row.ms["diffusers+compile"] = _median_ms(lambda: diffusers_forward(compiled_ref))
        ops.set_kernels_enabled(False)
        row.ms["ours, torch ops"] = _median_ms(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        ops.set_kernels_enabled(True)
        row.first_call_s["ours, kernels"] = _first_call(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        row.ms["ours, kernels"] = _median_ms(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        graphed = GraphedForward(ours)
        row.first_call_s["ours, kernels+graph"] = _first_call(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
        row.ms["ours, kernels+graph"] = _median_ms(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
        graphed.reset()
        rows.append(row)
        if on_row:
            on_row(row)
        del x, text
        torch.cuda.empty_cache()
    return rows
