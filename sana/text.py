"""Prompt encoding with the Gemma-2 text encoder, exactly as diffusers' SANA pipelines do it.

The prompt is lower-cased and stripped, prefixed with the "complex human instruction" (CHI; the video models have
their own), tokenised to `len(CHI tokens) + max_len - 2` with right padding, encoded, and reduced to BOS plus the
last `max_len - 1` positions. Negative prompts get no CHI prefix.
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

# The video models' instruction (SANA-Video; diffusers' SanaVideoPipeline / SanaImageToVideoPipeline default).
VIDEO_COMPLEX_HUMAN_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for video generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, motion, and temporal relationships to create vivid and dynamic scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat slowly settling into a curled position, peacefully falling asleep on a warm sunny windowsill, with gentle sunlight filtering through surrounding pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps gradually lighting up, a diverse crowd of people in colorful clothing walking past, and a double-decker bus smoothly passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)

# SANA-WM's instruction (diffusers' `DEFAULT_CHI_PROMPT` of `SanaWMPipeline`): the image wording, with the
# "Enhanced prompt" in double quotes. SANA-WM's prompts are neither lower-cased nor stripped (`lowercase=False`).
WORLD_COMPLEX_HUMAN_INSTRUCTION = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:',
    *COMPLEX_HUMAN_INSTRUCTION[1:],
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


def load_text_model(folder: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu",
                    variant: str | None = None) -> torch.nn.Module:
    """The Gemma-2 encoder of a `text_encoder/` folder: ours from safetensors (`sana.loading.gemma2`), or
    transformers' `AutoModel` for a folder whose weights are not safetensors. Anything but Gemma-2 is refused."""
    from .loading.gemma2 import gemma2_config, load_gemma2, text_encoder_files

    gemma2_config(folder)
    if text_encoder_files(folder, variant):
        return load_gemma2(folder, dtype=dtype, device=device, variant=variant)
    from transformers import AutoModel

    from .components import component_variant
    from .loading.files import BUILD_LOCK

    try:
        with BUILD_LOCK:
            model = AutoModel.from_pretrained(folder, dtype=dtype, variant=component_variant(folder, variant),
                                              trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SanaError(f"cannot load the text encoder from {folder}: {str(exc).splitlines()[0]}") from None
    return model.to(device)


class TextEncoder:
    """Gemma-2 decoder + tokenizer producing SANA's caption embeddings."""

    def __init__(self, tokenizer, model, *, max_length: int = 300, instruction: tuple[str, ...] | None = COMPLEX_HUMAN_INSTRUCTION,
                 lowercase: bool = True):
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.lowercase = lowercase  # diffusers' SANA / SANA-Video pipelines lower-case and strip; SANA-WM does not
        self.instruction = "\n".join(instruction) if instruction else None
        self.tokenizer.padding_side = "right"
        # What runs the model when not None (a `GraphedEncoder` the memory placement sets); its `width_multiple`
        # pads every forward's width, so that a prompt's embeddings never depend on whether it was replayed.
        self.runner = None

    @classmethod
    def from_pretrained(cls, model_dir: Path, *, dtype: torch.dtype, device: torch.device | str = "cpu",
                        variant: str | None = None,
                        instruction: tuple[str, ...] | None = COMPLEX_HUMAN_INSTRUCTION,
                        lowercase: bool = True) -> "TextEncoder":
        """The folder's tokenizer and Gemma-2 encoder, ours (`sana.tokenizer`, `sana.models.gemma2`) without
        transformers; transformers loads only a tokenizer without `tokenizer.json` and weights without safetensors."""
        from .components import require_component
        from .device import settle_cpu_math
        from .tokenizer import load_tokenizer
        from .trace import span

        settle_cpu_math()  # the RoPE cosines are often a process's first vector-math op, split across threads
        with span("tokenizer"):
            tokenizer = load_tokenizer(require_component(model_dir, "tokenizer"))
        model = load_text_model(require_component(model_dir, "text_encoder"), dtype=dtype, device=device,
                                variant=variant)
        return cls(tokenizer, model.eval(), instruction=instruction, lowercase=lowercase)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, prompts: list[str], *, with_instruction: bool = True) -> PromptEmbeddings:
        """Encode distinct prompts once each; rows come back in the order given."""
        return self.encode_many([(p, with_instruction) for p in prompts])

    @torch.no_grad()
    def encode_many(self, items: list[tuple[str, bool]]) -> PromptEmbeddings:
        """(prompt, with_instruction) items -> one row each, in order, from one Gemma forward over the distinct items.

        Each item is tokenised to the length its pipeline uses (with the instruction: `len(CHI) + max_len - 2`, else
        `max_len`) and reduced to BOS plus its last `max_len - 1` positions, as diffusers does. The forward runs only
        over the real tokens (right padding and a causal model: padding never changes a real token's state), all
        items in one batch; padded positions come back as zeros with mask 0 (diffusers returns the encoder's states
        there, which cross-attention masks out all the same).
        """
        unique = list(dict.fromkeys(items))
        rows = []  # (input ids, mask, total length) of each distinct item, padded to its own length
        for with_instruction in (True, False):
            group = [p for p, w in unique if w == with_instruction]
            if not group:
                continue
            texts = [preprocess_prompt(p) if self.lowercase else p for p in group]
            total_length = self.max_length
            if with_instruction and self.instruction:
                texts = [self.instruction + t for t in texts]
                # The instruction's token count includes BOS; the "- 2" is what the models were run with.
                total_length = len(self.tokenizer.encode(self.instruction)) + self.max_length - 2
            tokens = self.tokenizer(texts, padding="max_length", max_length=total_length, truncation=True,
                                    add_special_tokens=True, return_tensors="pt")
            for prompt, ids, mask in zip(group, tokens.input_ids, tokens.attention_mask):
                rows.append(((prompt, with_instruction), ids, mask, total_length))
        rows.sort(key=lambda row: unique.index(row[0]))

        # One forward over the longest real sequence (right padding keeps every row's tokens in front).
        width = max(int(mask.sum()) for _, _, mask, _ in rows) or 1
        if self.runner is not None:
            width = -(-width // self.runner.width_multiple) * self.runner.width_multiple
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (_, row_ids, row_mask, _) in enumerate(rows):
            n = min(width, row_ids.shape[0])
            ids[i, :n], mask[i, :n] = row_ids[:n], row_mask[:n]
        hidden = (self.runner or self.model)(ids.to(self.device), attention_mask=mask.to(self.device))  # [U, width, C]
        if not isinstance(hidden, torch.Tensor):  # a transformers model's output: the last hidden state first
            hidden = hidden[0]

        embeds = hidden.new_zeros((len(rows), self.max_length, hidden.shape[-1]))
        kept_mask = torch.zeros((len(rows), self.max_length), dtype=torch.long)
        for i, (_, _, row_mask, total_length) in enumerate(rows):
            # BOS and the last max_length - 1 positions: the prompt itself, after the instruction.
            keep = torch.tensor([0] + list(range(total_length - self.max_length + 1, total_length)))
            computed = keep < width
            embeds[i, computed.nonzero().squeeze(1).to(hidden.device)] = hidden[i, keep[computed].to(hidden.device)]
            kept_mask[i] = row_mask[keep]
        embeds = embeds * kept_mask.to(embeds.device, embeds.dtype).unsqueeze(-1)  # padded positions: zeros
        encoded = PromptEmbeddings(embeds, kept_mask.to(self.device))
        return encoded.index([unique.index(item) for item in items])
