"""The text's side of a DiT forward, computed once per image instead of at every denoising step.

The text reaches the image and video DiTs only through the caption MLP + RMSNorm and, in each block, the
cross-attention's keys and values, and none of these depend on the latents or the timestep. A denoising loop
builds a `TextContext` once (`model.text_context(embeds, mask)`) and passes it where the text goes; each block
then computes its keys and values the first time it runs and reads them back at every later step. The blocks
fill it lazily, inside their own forward, so weights streamed to the device block by block are in place when
their keys and values are made.

A forward given the raw text builds a context that keeps nothing (`keep=False`): training, where the text
changes every batch and activation checkpointing replays each block, computes exactly what it always did.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class KeysValuesSource(Protocol):
    def keys_values(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TextContext:
    """text [B, L, D] after the caption MLP and norm; bias [B, 1, 1, L] (-10000 on padding) or None; one slot a
    block for its cross-attention (keys, values), each [B, heads, L, head_dim]."""

    def __init__(self, text: torch.Tensor, bias: torch.Tensor | None, blocks: int, *, keep: bool):
        self.text = text
        self.bias = bias
        self.keys_values: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * blocks
        self.keep = keep

    def __len__(self) -> int:
        return self.text.shape[0]

    def for_block(self, index: int) -> "BlockText":
        return BlockText(self, index)

    def block_keys_values(self, index: int, attention: KeysValuesSource) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.keys_values[index]
        if kv is None:
            kv = attention.keys_values(self.text)
            # Never kept under autograd: a checkpointed block must recompute the same graph it first built.
            if self.keep and not torch.is_grad_enabled():
                self.keys_values[index] = kv
        return kv

    def fill(self, blocks: nn.ModuleList) -> "TextContext":
        """Every block's keys and values now (weights resident: before a CUDA graph is captured)."""
        for index, block in enumerate(blocks):
            self.block_keys_values(index, block.cross_attn)
        return self

    def signature(self) -> tuple:
        """What a captured graph depends on: shapes and dtypes, not values."""
        bias = None if self.bias is None else (tuple(self.bias.shape), self.bias.dtype)
        return (tuple(self.text.shape), self.text.dtype, bias, len(self.keys_values))

    def static_copy(self, blocks: nn.ModuleList) -> "TextContext":
        """A filled copy in fresh memory, for a CUDA graph to read: later contexts are copied into it."""
        copy = TextContext(self.text.clone(), None if self.bias is None else self.bias.clone(),
                           len(self.keys_values), keep=True)
        return copy.fill(blocks)

    @torch.no_grad()
    def load_from(self, other: "TextContext", blocks: nn.ModuleList) -> None:
        """Overwrite this (static) context in place with `other`'s text, recomputing each block's keys and values
        from it one block at a time, so that no second full set is held."""
        self.text.copy_(other.text)
        if self.bias is not None:
            self.bias.copy_(other.bias)
        for index, block in enumerate(blocks):
            keys, values = self.keys_values[index]
            new_keys, new_values = block.cross_attn.keys_values(self.text)
            keys.copy_(new_keys)
            values.copy_(new_values)


class BlockText:
    """One block's view of a context: the padding bias and that block's keys and values."""

    __slots__ = ("context", "index")

    def __init__(self, context: TextContext, index: int):
        self.context = context
        self.index = index

    @property
    def bias(self) -> torch.Tensor | None:
        return self.context.bias

    def keys_values(self, attention: KeysValuesSource) -> tuple[torch.Tensor, torch.Tensor]:
        return self.context.block_keys_values(self.index, attention)


def build_text_context(model: nn.Module, text: torch.Tensor, text_mask: torch.Tensor | None, *,
                       bias_dtype: torch.dtype, keep: bool) -> TextContext:
    """The context of a DiT with `caption_projection`, `caption_norm` and `blocks` (the image and video DiTs)."""
    projected = model.caption_norm(model.caption_projection(text))  # [B, L, D]
    bias = None
    if text_mask is not None:
        bias = ((1 - text_mask.to(bias_dtype)) * -10000.0)[:, None, None, :]  # [B, 1, 1, L]
    return TextContext(projected, bias, len(model.blocks), keep=keep)


def context_for_forward(model: nn.Module, text: torch.Tensor | TextContext, text_mask: torch.Tensor | None,
                        dtype: torch.dtype) -> TextContext:
    """The context a forward was given, or one built from raw text that keeps nothing (what a forward computed
    before contexts existed, bias in the tokens' dtype)."""
    if isinstance(text, TextContext):
        if text_mask is not None:
            raise ValueError("a TextContext carries its own mask; pass text_mask when the context is built")
        return text
    return build_text_context(model, text, text_mask, bias_dtype=dtype, keep=False)


class LazyTextContext:
    """A denoising loop's context, built on the first step: inside the denoise phase of a memory plan, where the
    caption MLP's weights are on the device (an out-of-memory retry builds a new loop, and so a new context)."""

    def __init__(self, model: nn.Module, text: torch.Tensor, text_mask: torch.Tensor | None):
        self.model = model
        self.text = text
        self.text_mask = text_mask
        self._context: TextContext | None = None

    def __call__(self) -> TextContext:
        if self._context is None:
            self._context = self.model.text_context(self.text, self.text_mask)
        return self._context
