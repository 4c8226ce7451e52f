"""Loading a Gemma-2 text encoder (`text_encoder/` of a SANA folder) as our `Gemma2Encoder`, without transformers.

Files are transformers': `config.json` and `model.safetensors`, or shards listed in `model.safetensors.index.json`,
preferring variant files (`model.bf16.safetensors`, `model.bf16-00001-of-00002.safetensors` with
`model.safetensors.index.bf16.json`) when asked for and present. Safetensors only: nothing is unpickled.
`Gemma2Model` checkpoints (the image and video repos) name the decoder's tensors as they are;
`Gemma2ForCausalLM` ones (SANA-WM's) put `model.` in front and may carry `lm_head.weight`, which the encoder
never uses: both load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..components import read_json
from ..errors import SanaError
from ..models.gemma2 import Gemma2Config, Gemma2Encoder
from .files import LoadReport, assign, read_safetensors, weight_files

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CAUSAL_LM_PREFIX = "model."  # Gemma2ForCausalLM's name for its decoder
UNUSED = ("lm_head.",)  # the LM head (tied to the embedding in Gemma-2): logits are not what SANA reads


def text_encoder_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files of a transformers model folder, the `variant`'s when present; [] when it holds none
    (e.g. only `pytorch_model.bin`)."""
    return weight_files(folder, variant, weights_name=WEIGHTS_NAME, index_name=INDEX_NAME)


def gemma2_config(folder: Path) -> Gemma2Config:
    """The folder's `config.json` as a Gemma2Config; anything but Gemma-2 is a SanaError."""
    data = read_json(Path(folder) / "config.json")
    try:
        return Gemma2Config.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise SanaError(f"unsupported text encoder in {folder}: {exc}",
                        "SANA models use a Gemma-2 text encoder (transformers' Gemma2Model)") from None


def load_gemma2(folder: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                variant: str | None = None) -> Gemma2Encoder:
    """Our Gemma-2 encoder from a transformers folder (see the module docstring), in `dtype` on `device`.
    Missing or misshapen weights and unreadable files raise `SanaError`; so does a folder without safetensors.
    The model's `load_report` lists the files read, unexpected tensors and the ignored LM head."""
    folder = Path(folder)
    config = gemma2_config(folder)
    files = text_encoder_files(folder, variant)
    if not files:
        raise SanaError(f"no text encoder weights in {folder}", "expected model*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for file in files:  # straight to the device, cast tensor by tensor: no full-precision copy of the model exists
        state.update(read_safetensors(file, device=device, dtype=dtype))
    model = gemma2_from_state(config, state, device=device, origin=f"the text encoder in {folder}")
    model.load_report.files = [f.name for f in files]
    return model


def gemma2_from_state(config: Gemma2Config, state: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                      device: torch.device | str = "cpu", origin: str = "the text encoder") -> Gemma2Encoder:
    """Our encoder from a state dict in `Gemma2Model` or `Gemma2ForCausalLM` names (e.g. a transformers model's
    `state_dict()`); `dtype` None keeps the tensors' own."""
    prefix = CAUSAL_LM_PREFIX if f"{CAUSAL_LM_PREFIX}embed_tokens.weight" in state else ""
    ignored = sorted(k for k in state if k.startswith(UNUSED))
    sources: dict[str, str] = {}
    kept: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(UNUSED):
            continue
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        sources[name] = key
        kept[name] = tensor.to(dtype) if dtype is not None else tensor
    with torch.device("meta"):
        model = Gemma2Encoder(config)
    unexpected = assign(model, kept, sources, checkpoint=origin, prefix=prefix)
    model = model.to(device=device).eval()
    model.load_report = LoadReport(files=[], unexpected=unexpected, ignored=ignored)
    return model
