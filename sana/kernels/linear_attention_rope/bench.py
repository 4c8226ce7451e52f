"""Benchmark: fused linear attention with RoPE vs its reference and diffusers' eager math, SANA-Video shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.linear_attention_rope.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32, --sweep to time launch shapes). q, k, v are the views of one
fused qkv projection and the cos/sin tables are in the model dtype, as in a bf16 diffusers model. GB/s counts the
bytes the op must move: q, k, v read once and the output written once (the tables, N x D each, are left out).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F

from .._bench import median_ms, run_bench
from .reference import linear_attention_rope_reference
from .triton import Config, default_config, linear_attention_rope

# name: (batch, tokens, heads, head dim); tokens = latent frames x rows x columns of the patched grid.
SHAPES = {
    "video-480p-81f": (2, 21 * 30 * 52, 20, 112),  # Wan VAE (4x time, 8x space) and 2x2 patches
    "video-720p-21x22x40": (2, 21 * 22 * 40, 20, 112),  # LTX-2 VAE (32x space), patch 1, 704 x 1280
}


def linear_attention_rope_diffusers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                                    sin: torch.Tensor, heads: int) -> torch.Tensor:
    """The same op written as diffusers 0.42 writes it (`SanaLinearAttnProcessor3_0`, between the projections):
    rotated copies of q and k, head-major permutes, the normaliser as a reciprocal. [B, N, H*D] in q's dtype."""
    original_dtype = q.dtype
    query = F.relu(q.unflatten(2, (heads, -1)))  # [B, N, H, D]
    key = F.relu(k.unflatten(2, (heads, -1)))
    value = v.unflatten(2, (heads, -1))
    cos, sin = cos[None, :, None], sin[None, :, None]  # [1, N, 1, D]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
        out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
        return out

    query_rotate, key_rotate = rotate(query), rotate(key)
    query, key = query.permute(0, 2, 3, 1), key.permute(0, 2, 3, 1)  # [B, H, D, N]
    query_rotate = query_rotate.permute(0, 2, 3, 1).float()
    key_rotate = key_rotate.permute(0, 2, 3, 1).float()
    value = value.permute(0, 2, 3, 1).float()
    z = 1 / (key.sum(dim=-1, keepdim=True).transpose(-2, -1) @ query + 1e-15)  # [B, H, 1, N], input dtype
    scores = torch.matmul(value, key_rotate.transpose(-1, -2))  # [B, H, D, D]
    hidden = torch.matmul(scores, query_rotate) * z  # [B, H, D, N]
    return hidden.flatten(1, 2).transpose(1, 2).to(original_dtype)


def _inputs(name: str, dtype: torch.dtype):
    b, n, h, d = SHAPES[name]
    torch.manual_seed(0)
    qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=dtype)  # one fused projection output
    q, k, v = qkv.chunk(3, dim=-1)
    angles = torch.rand(n, d // 2, device="cuda") * 6.283
    cos = angles.cos().repeat_interleave(2, dim=-1).to(dtype)  # [N, D]
    sin = angles.sin().repeat_interleave(2, dim=-1).to(dtype)
    return (q, k, v, cos, sin, h), 4 * b * n * h * d * qkv.element_size()


def time_shape(name: str, dtype: torch.dtype) -> tuple[str, int, dict[str, float]]:
    args, nbytes = _inputs(name, dtype)
    times = {
        "triton": median_ms(lambda: linear_attention_rope(*args)),
        "reference": median_ms(lambda: linear_attention_rope_reference(*args)),
        "diffusers": median_ms(lambda: linear_attention_rope_diffusers(*args)),
    }
    return name, nbytes, times


def sweep(name: str, dtype: torch.dtype) -> Config:
    """Launch shapes at one named shape: each phase's tokens a step, warps and stages with the other phase at its
    default, then the two best phases together over programs per SM. Prints the fastest shapes with their
    error against the fp32 reference, and returns the fastest."""
    args, nbytes = _inputs(name, dtype)
    q, k, v, cos, sin, h = args
    ref = linear_attention_rope_reference(q.float(), k.float(), v.float(), cos.float(), sin.float(), h)
    block_d = 2 * max(16, 1 << (q.shape[-1] // h // 2 - 1).bit_length())
    base = default_config(block_d, q.element_size())
    results: dict[Config, tuple[float, float]] = {}

    def run(config: Config) -> float:
        if config not in results:
            try:
                out = linear_attention_rope(*args, config=config)
                err = ((out.float() - ref).norm() / ref.norm()).item()
                results[config] = (median_ms(lambda: linear_attention_rope(*args, config=config)), err)
            except Exception as exc:  # a shape that does not fit the shared memory or registers
                print(f"  {config}: {type(exc).__name__}")
                results[config] = (float("inf"), float("nan"))
        return results[config][0]

    grid = list(itertools.product((32, 64, 128), (4, 8), (2, 3, 4)))
    kv_best = min((dataclasses.replace(base, kv_tokens=t, kv_warps=w, kv_stages=st) for t, w, st in grid), key=run)
    out_best = min((dataclasses.replace(base, out_tokens=t, out_warps=w, out_stages=st) for t, w, st in grid),
                   key=run)
    both = dataclasses.replace(kv_best, out_tokens=out_best.out_tokens, out_warps=out_best.out_warps,
                               out_stages=out_best.out_stages)
    for per_sm in (1, 2, 4, 8):
        run(dataclasses.replace(both, programs_per_sm=per_sm))
    print(f"linear_attention_rope sweep, {name} ({dtype}, {torch.cuda.get_device_name()}); default {base}")
    ranked = sorted(results.items(), key=lambda r: r[1][0])
    for config, (ms, err) in ranked[:12]:
        print(f"  {config}: {ms:.3f} ms, {nbytes / ms / 1e6:.0f} GB/s, rel. err {err:.2e}")
    return ranked[0][0]


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "linear_attention_rope", time_shape, sweep)


if __name__ == "__main__":
    main()
