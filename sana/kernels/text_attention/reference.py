"""Cross-attention to the text in plain PyTorch, as the models (and diffusers) compute it: the queries' heads
split off a token-major [B, N, H*D] tensor, `F.scaled_dot_product_attention` against keys and values of
[B, H, L, D] with the padding masked, and the heads joined back into [B, N, H*D].

The mask is either an additive float bias broadcastable to [B, 1, 1, L] (the image and video DiTs: -10000 on
padding) or a boolean one (True: attend; SANA-WM), as SDPA takes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, N, H*D], k and v [B, H, L, D], mask None or broadcastable to [B, 1, 1, L] -> [B, N, H*D] in q's
    dtype: softmax(q k^T / sqrt(D) + mask) v per head."""
    b, n, _ = q.shape
    out = F.scaled_dot_product_attention(q.unflatten(-1, (heads, -1)).transpose(1, 2), k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
