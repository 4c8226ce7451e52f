"""Gemma-2's decoder stack (transformers' `Gemma2Model`) for inference: SANA's caption embeddings.

Token ids [B, L] and a right-padding mask [B, L] -> the final-norm hidden states [B, L, C], what
`Gemma2Model(input_ids, attention_mask=mask)[0]` returns. The arithmetic is transformers' (eager attention):

- the token embedding times sqrt(C), the factor rounded to the weights' dtype first;
- per layer: RMSNorm -> grouped-query attention (RoPE on q and k, scores scaled by `query_pre_attn_scalar**-0.5`
  and soft-capped as `cap * tanh(s / cap)`, a causal mask that sliding-window layers narrow to the last `window`
  positions, softmax in fp32) -> RMSNorm -> residual; RMSNorm -> gated MLP `down(gelu_tanh(gate(x)) * up(x))` ->
  RMSNorm -> residual;
- a final RMSNorm. Every RMSNorm scales by `1 + weight` and is computed in fp32, then cast back.

Parameter names are `Gemma2Model`'s (`embed_tokens.weight`, `layers.N.self_attn.q_proj.weight`, ..., `norm.weight`),
so its `text_encoder/` checkpoints load as they are (`sana.loading.gemma2`). There are no buffers: the rotary
frequencies are computed in fp32 at each forward, so moving or casting the module (offload, a CPU home in
another dtype) never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu_pytorch_tanh",)  # transformers' name for `F.gelu(x, approximate="tanh")`
LAYER_TYPES = ("sliding_attention", "full_attention")


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gemma2Config:
    """The decoder's hyperparameters in transformers' `Gemma2Config` names; defaults are its (Gemma-2-2B)."""

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    query_pre_attn_scalar: float = 256
    attn_logit_softcapping: float | None = 50.0
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] = ()  # empty: sliding and full alternate, the first sliding (transformers' default)
    hidden_activation: str = "gelu_pytorch_tanh"
    attention_bias: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "Gemma2Config":
        """From a `config.json` written by transformers 4 or 5; raises ValueError for anything but Gemma-2."""
        kind = data.get("model_type")
        if kind != "gemma2":
            raise ValueError(f"model_type is {kind!r}, not 'gemma2'")
        if data.get("use_bidirectional_attention"):
            raise ValueError("bidirectional attention is not Gemma-2's causal decoder")
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"RoPE type {rope.get('rope_type', rope.get('type'))!r} is not supported")
        fields = {name: data[name] for name in cls.__dataclass_fields__ if data.get(name) is not None}
        fields.pop("rope_theta", None)
        theta = rope.get("rope_theta", data.get("rope_theta"))
        if theta is not None:
            fields["rope_theta"] = float(theta)
        for name in ("sliding_window", "attn_logit_softcapping"):  # present but null means none
            if name in data and data[name] is None:
                fields[name] = None
        activation = data.get("hidden_activation") or data.get("hidden_act")
        if activation:
            fields["hidden_activation"] = activation
        if "head_dim" not in fields and "hidden_size" in fields:
            fields["head_dim"] = fields["hidden_size"] // fields.get("num_attention_heads", cls.num_attention_heads)
        fields["layer_types"] = tuple(data.get("layer_types") or ())
        return cls(**fields)

    def __post_init__(self):
        if not self.layer_types:
            types = tuple(LAYER_TYPES[i % 2] for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"{len(self.layer_types)} layer_types for {self.num_hidden_layers} layers")
        odd = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if odd:
            raise ValueError(f"layer type {odd[0]!r} is not one of {', '.join(LAYER_TYPES)}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.hidden_activation!r} is not Gemma-2's gelu_pytorch_tanh")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} heads do not share {self.num_key_value_heads} KV heads")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd (RoPE rotates pairs)")


# ---------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """Gemma's RMSNorm: `x / rms(x) * (1 + weight)` in fp32, cast back to the input's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        # (x * (1 + w)) in fp32, then the cast: Gemma's order (Llama casts first).
        return (h * (1.0 + self.weight.float())).type_as(x)


def rotary_tables(config: Gemma2Config, length: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [L, D] of positions 0..L-1, computed in fp32 (on the CPU, as transformers makes its frequencies
    at init) and cast to `dtype`."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))  # [D/2]
    positions = torch.arange(length, device=device).float()
    freqs = positions[:, None] * inv_freq.to(device)[None, :]  # [L, D/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [L, D]: both halves rotate by the same angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [-x2, x1] for the halves x1, x2 (the pairing transformers' RoPE uses)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_masks(config: Gemma2Config, padding: torch.Tensor | None, length: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Which keys each query sees, [B or 1, 1, L, L] booleans per layer type: causal, not padding, and for
    sliding layers one of the last `sliding_window` positions (key > query - window)."""
    q = torch.arange(length, device=device)[:, None]
    k = torch.arange(length, device=device)[None, :]
    full = k <= q  # [L, L]
    if padding is not None:
        full = full[None] & padding.to(device=device, dtype=torch.bool)[:, None, :]  # [B, L, L]
    else:
        full = full[None]
    sliding = full if config.sliding_window is None else full & (k > q - config.sliding_window)
    return {"full_attention": full[:, None], "sliding_attention": sliding[:, None]}


class Embedding(nn.Embedding):
    """nn.Embedding that starts from zeros: its table always comes from a checkpoint, and the random `normal_` init
    on the meta device (where the loader builds the model) runs through Python references that import
    torch._dynamo, seconds of a fresh process's start."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


class Attention(nn.Module):
    """Grouped-query softmax attention with RoPE and soft-capped scores (eager arithmetic)."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.query_pre_attn_scalar ** -0.5
        self.softcap = config.attn_logit_softcapping
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], allowed: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, D]
        k = self.k_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, L, D]
        v = self.v_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, L, D]
        cos, sin = rope  # [L, D]
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)
        group = self.heads // self.kv_heads  # KV head h serves query heads h*group ... (h+1)*group - 1
        # repeat_interleave along the heads as a broadcast (no size computation on the device: capturable)
        k = k[:, :, None].expand(B, self.kv_heads, group, L, self.head_dim).reshape(B, self.heads, L, self.head_dim)
        v = v[:, :, None].expand(B, self.kv_heads, group, L, self.head_dim).reshape(B, self.heads, L, self.head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # [B, H, L, L]
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, L, self.heads * self.head_dim)  # [B, L, H*D]
        return self.o_proj(out)


class MLP(nn.Module):
    """`down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Attention and MLP, each between a pre-norm and a post-norm, each added to the residual."""

    def __init__(self, config: Gemma2Config, layer_type: str):
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, allowed))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

class Gemma2Encoder(nn.Module):
    """Gemma-2's decoder stack without the LM head: token ids [B, L] -> last hidden states [B, L, C]."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)  # padding_idx only matters to training
        self.layers = nn.ModuleList([DecoderLayer(config, kind) for kind in config.layer_types])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input_ids` [B, L]; `attention_mask` [B, L] (1 = token, 0 = padding; right padding). Padded positions
        get states too (queries there see the real tokens before them), as in transformers."""
        return self.run_layers(*self.prepare(input_ids, attention_mask))

    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        """The layers' inputs: the scaled embeddings [B, L, C], the rotary tables and the attention masks (the part
        of the forward with host-to-device copies, kept out of a captured graph)."""
        x = self.embed_tokens(input_ids)  # [B, L, C]
        # sqrt(C) rounded to the weights' dtype before the product, as transformers does (in bf16, sqrt(3072) becomes
        # 55.5): the model was trained with the rounded factor.
        x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=torch.float32).to(x.device, x.dtype)
        length = input_ids.shape[1]
        rope = rotary_tables(self.config, length, x.device, x.dtype)
        return x, rope, attention_masks(self.config, attention_mask, length, x.device)

    def run_layers(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """`prepare`'s outputs -> the last hidden states [B, L, C]."""
        for layer in self.layers:
            x = layer(x, rope, masks[layer.layer_type])
        return self.norm(x)
