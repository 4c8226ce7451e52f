"""The nano SANA model's components and its diffusers-format directory.

Layout and classes are the real SANA repos' (`SanaPipeline`: Gemma-2 text encoder and tokenizer, DC-AE,
`SanaTransformer2DModel`, DPM-Solver++ flow scheduler), so `sana gen`, `sana finetune` and diffusers load it
unchanged. Only the sizes are nano:

- tokenizer: a Gemma-style byte-fallback BPE trained word by word on the grammar and the instruction prefix,
  so every grammar word is one token and no token spans two words (a "red triangle" token would make a
  held-out pair an unseen symbol instead of a new combination of seen ones);
- text encoder: `Gemma2Model`, 2 layers of width 128, random init from a fixed seed (the DiT learns to read
  it; SANA trains with the text encoder frozen, as here);
- VAE: `AutoencoderDC` at 16x compression to 8 x 16 x 16 latents (`sana.nano.autoencoder`);
- DiT: `SanaTransformer2DModel` of width 192 (6 heads of 32), 8 layers, with fixed sin-cos position embeddings
  (`interpolation_scale` 1, as SANA 4K): "on the left" needs absolute position, which SANA 1.0 otherwise only
  infers from the Mix-FFN convs' zero padding.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SanaError
from ..text import COMPLEX_HUMAN_INSTRUCTION
from .shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

TEXT_HIDDEN = 128  # Gemma-2 width = the DiT's caption_channels
TEXT_MAX_POSITIONS = 512  # instruction (~180 tokens) + the pipelines' 300 prompt tokens
TOKENIZER_VOCAB = 1024  # an upper bound: training stops when every corpus word is one token (~750)
LATENT_CHANNELS = 8
LATENT_SIDE = 16  # 256 px / 16
FLOW_SHIFT = 3.0  # what SANA's 16 x 16-latent (512 px) models sample with
SIZE_BUDGET = 15_000_000  # bytes on disk, the whole directory
COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")


# -- tokenizer and text encoder ------------------------------------------------------------------------------

def grammar_words() -> list[str]:
    """Every word a caption of the grammar can contain."""
    words = {"a", "and", "on", "background"} | set(SIZES) | set(COLORS) | set(SHAPES) | set(BACKGROUNDS)
    for phrase, _ in POSITIONS.values():
        words.update(phrase.split())
    return sorted(words)


def tokenizer_corpus() -> list[str]:
    """One entry a word, each with its leading space (the tokenizer's "▁"), so no merge can cross words; the
    instruction prefix's words are in it too, so the prefix costs a token a word rather than bytes."""
    instruction = "\n".join(COMPLEX_HUMAN_INSTRUCTION).replace("\n", " \n").split(" ")
    return [f" {w}" for w in grammar_words()] * 50 + [f" {w}" for w in instruction if w] * 20


def build_tokenizer(path: Path):
    """Train the nano tokenizer, save it at `path` and return it (a transformers Gemma tokenizer)."""
    from ..tokenizer import train_gemma_style_bpe

    return train_gemma_style_bpe(tokenizer_corpus(), Path(path), vocab_size=TOKENIZER_VOCAB)


def text_encoder_config(vocab_size: int):
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=TEXT_MAX_POSITIONS, sliding_window=TEXT_MAX_POSITIONS,  # every layer sees it all
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def build_text_encoder(vocab_size: int, seed: int = 0):
    """A randomly initialised Gemma-2 (the same weights for the same seed), in eval mode."""
    from transformers import Gemma2Model

    torch.manual_seed(seed)
    return Gemma2Model(text_encoder_config(vocab_size)).eval()


# -- DiT and scheduler ---------------------------------------------------------------------------------------

def transformer_config() -> dict:
    """`SanaTransformer2DModel` kwargs of the nano DiT (~5.0 M parameters)."""
    width_heads, head_dim = 6, 32
    return dict(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_attention_heads=width_heads, attention_head_dim=head_dim, num_layers=8,
        num_cross_attention_heads=width_heads, cross_attention_head_dim=head_dim,
        cross_attention_dim=width_heads * head_dim, caption_channels=TEXT_HIDDEN,
        mlp_ratio=2.5, sample_size=LATENT_SIDE, patch_size=1, interpolation_scale=1.0,
    )


def build_transformer(seed: int = 0):
    """The nano DiT with diffusers' own initialisation (seeded)."""
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(**transformer_config()).eval()


def load_transformer_weights(path: Path):
    """The nano DiT with the weights at `path`: a model or transformer folder, or one safetensors / .pth file in
    diffusers, NVlabs or engine naming (e.g. a `sana finetune` export); read through the engine's loader, so
    every format it reads works here, and checked against the nano config."""
    from diffusers import SanaTransformer2DModel

    from ..loading import engine_to_diffusers, load_transformer

    config = transformer_config()
    # The nano config wins over a folder's own: weights of another shape fail here, naming the tensor.
    engine = load_transformer(Path(path), dtype=torch.float32, config=config)
    state = engine_to_diffusers(engine.state_dict(), guidance_embeds=False)
    model = SanaTransformer2DModel(**config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SanaError(f"{path} does not fit the nano transformer config",
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def build_scheduler(flow_shift: float = FLOW_SHIFT):
    """DPM-Solver++ 2M on flow sigmas: the scheduler config the SANA diffusers repos ship."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=flow_shift, final_sigmas_type="zero", lower_order_final=True, solver_type="midpoint",
    )


# -- the directory -------------------------------------------------------------------------------------------

@dataclass
class NanoBuild:
    path: Path
    sizes: dict[str, int]  # bytes on disk per component folder, plus model_index.json under "index"
    params: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def directory_sizes(model_dir: Path) -> dict[str, int]:
    """Bytes on disk per component folder (and the index), as shipped."""
    model_dir = Path(model_dir)
    sizes = {name: sum(f.stat().st_size for f in (model_dir / name).rglob("*") if f.is_file())
             for name in COMPONENTS if (model_dir / name).is_dir()}
    index = model_dir / "model_index.json"
    if index.is_file():
        sizes["index"] = index.stat().st_size
    return sizes


def write_nano_model(out_dir: Path, vae, *, transformer=None, text_from: Path | None = None, seed: int = 0,
                     flow_shift: float = FLOW_SHIFT, dtype: torch.dtype = torch.float16,
                     check_budget: bool = True) -> NanoBuild:
    """Write the complete nano model to `out_dir` in diffusers' layout, weights in `dtype`.

    `vae` is a trained `AutoencoderDC` or its folder; `transformer` is a `SanaTransformer2DModel`, a weights
    path (see `load_transformer_weights`) or None for a seeded random DiT (a loadable model before training).
    The tokenizer and text encoder are copied from the nano model `text_from` when given (a DiT only works
    with the text encoder it was trained against), else built from `seed`.
    """
    from diffusers import AutoencoderDC, SanaPipeline

    # 1. Components: check what was given, build or load the rest.
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SanaError(f"{out_dir} is not empty", "choose a new folder for the nano model")
    # Modules given are copied: saving casts to `dtype`, which must not change the caller's models.
    vae = copy.deepcopy(vae) if isinstance(vae, torch.nn.Module) else AutoencoderDC.from_pretrained(Path(vae))
    factor = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    if vae.config.latent_channels != LATENT_CHANNELS or factor * LATENT_SIDE != 256:
        raise SanaError(f"the VAE gives {vae.config.latent_channels} x {256 // factor} x {256 // factor} latents at "
                        f"256 px, the nano DiT takes {LATENT_CHANNELS} x {LATENT_SIDE} x {LATENT_SIDE}",
                        "train one with `sana shapes train-vae`")
    transformer = resolve_transformer(transformer, lambda: build_transformer(seed), load_transformer_weights)
    if text_from is not None:
        tokenizer, text_encoder = load_text_components(Path(text_from))
    else:
        tokenizer = build_tokenizer(out_dir / "tokenizer")
        text_encoder = build_text_encoder(len(tokenizer), seed)

    # 2. Save as one SanaPipeline, so model_index.json names the classes diffusers expects.
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer.eval(),
                        scheduler=build_scheduler(flow_shift))
    pipe.to(dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _drop_source_paths(out_dir)

    # 3. Sizes against the budget.
    return measure_build(NanoBuild(out_dir, directory_sizes(out_dir), count_parameters(transformer, text_encoder, vae)),
                         "nano model", SIZE_BUDGET if check_budget else None)


def resolve_transformer(given, build, load):
    """The DiT to write: `build()` when None is given, a copy of a given module (saving casts it, which must not
    change the caller's), else `load(path)` of a weights path."""
    if given is None:
        return build()
    if isinstance(given, torch.nn.Module):
        return copy.deepcopy(given)
    return load(Path(given))


def count_parameters(transformer, text_encoder, vae) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in (("transformer", transformer), ("text_encoder", text_encoder), ("vae", vae))}


def measure_build(build: NanoBuild, name: str, budget: int | None) -> NanoBuild:
    """`build`, or a SanaError naming the `name` ("nano model") when it is over `budget` bytes (None: no check)."""
    if budget is not None and build.total_bytes > budget:
        raise SanaError(f"the {name} takes {build.total_bytes / 1e6:.1f} MB, over its {budget / 1e6:.0f} MB budget")
    return build


def _drop_source_paths(model_dir: Path) -> None:
    """diffusers records where a component was loaded from (`_name_or_path`); a shipped model names no folder
    of the machine that built it."""
    for path in model_dir.glob("*/config.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_text_components(model_dir: Path):
    """(tokenizer, text encoder) of an existing model directory, the encoder in fp32."""
    from transformers import AutoModel, AutoTokenizer

    from ..components import require_component

    tokenizer = AutoTokenizer.from_pretrained(require_component(model_dir, "tokenizer"))
    text_encoder = AutoModel.from_pretrained(require_component(model_dir, "text_encoder"), dtype=torch.float32)
    return tokenizer, text_encoder.eval()
