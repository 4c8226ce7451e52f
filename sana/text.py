"""Prompt encoding with the Gemma-2 text encoder, exactly as diffusers' SANA pipelines do it.

The prompt is lower-cased and stripped, prefixed with the "complex human instruction" (CHI), tokenised to
`len(CHI tokens) + max_len - 2` with right padding, encoded, and reduced to BOS plus the last `max_len - 1`
positions. Negative prompts get no CHI prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SanaError

# The instruction prefix the SANA models were trained with (NVlabs' app configs; diffusers' default).
COMPLEX_HUMAN_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)


@dataclass
class PromptEmbeddings:
    """Encoded prompts: `embeds` [B, L, C] and `mask` [B, L] (1 = token, 0 = padding)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(parts: list["PromptEmbeddings"]) -> "PromptEmbeddings":
        return PromptEmbeddings(torch.cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]))

    def to(self, device: torch.device | str) -> "PromptEmbeddings":
        return PromptEmbeddings(self.embeds.to(device), self.mask.to(device))

    def trimmed(self, multiple: int = 64) -> "PromptEmbeddings":
        """Without the trailing columns that are padding in every row, the length rounded up to `multiple` (so
        prompts of similar length share one shape, and one captured graph). Cross-attention ignores masked keys,
        so the result is the same; a short prompt's 300-token pad no longer costs attention work."""
        used = self.mask.any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        length = min(self.mask.shape[1], -(-length // multiple) * multiple)
        return PromptEmbeddings(self.embeds[:, :length], self.mask[:, :length])

    def index(self, rows: list[int]) -> "PromptEmbeddings":
        idx = torch.tensor(rows, device=self.embeds.device)
        return PromptEmbeddings(self.embeds[idx], self.mask[idx.to(self.mask.device)])


def preprocess_prompt(prompt: str) -> str:
    """What diffusers does with `clean_caption=False`: lower-case and strip."""
    return prompt.lower().strip()


class TextEncoder:
    """Gemma-2 decoder + tokenizer producing SANA's caption embeddings."""

    def __init__(self, tokenizer, model, *, max_length: int = 300, instruction: tuple[str, ...] | None = COMPLEX_HUMAN_INSTRUCTION):
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.instruction = "\n".join(instruction) if instruction else None
        self.tokenizer.padding_side = "right"

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu",
                        variant: str | None = None) -> "TextEncoder":
        from transformers import AutoModel, AutoTokenizer

        from .components import component_variant, require_component

        tokenizer_dir = require_component(model_dir, "tokenizer")
        te_dir = require_component(model_dir, "text_encoder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
            model = AutoModel.from_pretrained(
                te_dir, dtype=dtype, variant=component_variant(te_dir, variant), trust_remote_code=False
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise SanaError(f"cannot load the text encoder from {model_dir}: {str(exc).splitlines()[0]}") from None
        return cls(tokenizer, model.to(device).eval())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, prompts: list[str], *, with_instruction: bool = True) -> PromptEmbeddings:
        """Encode distinct prompts once each; rows come back in the order given."""
        unique = list(dict.fromkeys(prompts))
        texts = [preprocess_prompt(p) for p in unique]
        if with_instruction and self.instruction:
            texts = [self.instruction + t for t in texts]
            # The instruction's token count includes BOS; the "- 2" is what the models were run with.
            total_length = len(self.tokenizer.encode(self.instruction)) + self.max_length - 2
        else:
            total_length = self.max_length
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=total_length, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(ids, attention_mask=mask)[0]  # [U, T, C]
        # Keep BOS and the last max_length - 1 positions: the prompt itself, after the instruction.
        keep = [0] + list(range(total_length - self.max_length + 1, total_length))
        encoded = PromptEmbeddings(hidden[:, keep], mask[:, keep])
        return encoded.index([unique.index(p) for p in prompts])
