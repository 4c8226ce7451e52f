"""Benchmark: fused linear attention with RoPE vs its reference and diffusers' eager math, SANA-Video shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.linear_attention_rope.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). q, k, v are the views of one fused qkv projection and the
cos/sin tables are in the model dtype, as in a bf16 diffusers model. GB/s counts the bytes the op must move:
q, k, v read once and the output written once (the tables, N x D each, are left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._bench import median_ms, parse_args, print_table
from .reference import linear_attention_rope_reference
from .triton import linear_attention_rope

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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        b, n, h, d = SHAPES[name]
        torch.manual_seed(0)
        qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=args.dtype)  # one fused projection output
        q, k, v = qkv.chunk(3, dim=-1)
        angles = torch.rand(n, d // 2, device="cuda") * 6.283
        cos = angles.cos().repeat_interleave(2, dim=-1).to(args.dtype)  # [N, D]
        sin = angles.sin().repeat_interleave(2, dim=-1).to(args.dtype)
        times = {
            "triton": median_ms(lambda: linear_attention_rope(q, k, v, cos, sin, h)),
            "reference": median_ms(lambda: linear_attention_rope_reference(q, k, v, cos, sin, h)),
            "diffusers": median_ms(lambda: linear_attention_rope_diffusers(q, k, v, cos, sin, h)),
        }
        rows.append((name, 4 * b * n * h * d * qkv.element_size(), times))
        del qkv, q, k, v
        torch.cuda.empty_cache()
    print_table(f"linear_attention_rope ({args.dtype})", rows)


if __name__ == "__main__":
    main()
