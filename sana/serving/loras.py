"""LoRAs from the server's allow-list (`sana serve --lora NAME=PATH[:SCALE]`), merged into a served DiT for the
batches that name them and taken out again, exactly.

A request names a LoRA (and may scale it); clients never name files. Requests with different LoRAs never share a
forward (the LoRA is part of the batch key), so one LoRA at most is merged at a time, as SGLang's server does.
Merging is `sana.lora.merge_loras`' arithmetic on the diffusers-named weights it targets (the fused q/k/v slices
included), written into the engine's parameters in place: their storage never moves, so a captured CUDA graph and
host-resident (offloaded, streamed) weights see the change. The base values of those parameters are kept aside
while a LoRA is in and copied back bit for bit when it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SanaError

if TYPE_CHECKING:  # torch is imported where the DiT is touched: `sana serve` checks --lora before torch loads
    import torch


@dataclass(frozen=True)
class AllowedLora:
    """One allow-list entry: the name requests use, the file, its default scale and the file's sha256."""

    name: str
    path: Path
    scale: float
    sha256: str
    # Sampling settings the file carries (`lora.SAMPLING_METADATA_KEY`: an RL LoRA's rollout guidance), which a
    # request naming this LoRA gets where it leaves them out, as `sana gen --lora` does.
    sampling: dict = field(default_factory=dict)

    def record(self, scale: float) -> dict:
        """The entry as `sana gen` records a LoRA in an output's metadata, by the name it is served under: the
        server's file path stays on the server (a replay names the LoRA as `--lora NAME` does with `--server`,
        and the sha256 tells which file it was)."""
        return {"path": self.name, "scale": scale, "sha256": self.sha256, "name": self.name, "served": True}


class LoraSwitch:
    """The allow-listed LoRAs of one served DiT and the one merged into it now. Used by the worker thread only."""

    def __init__(self, transformer: torch.nn.Module, allowed: dict[str, AllowedLora]):
        from ..loading import diffusers_to_engine, engine_to_diffusers, video_engine_to_diffusers
        from ..models.video_transformer import SanaVideoTransformer

        from ..loading.video import VIDEO_CLASS_NAME

        self.transformer = transformer
        self.allowed = allowed
        guidance = bool(getattr(transformer.config, "guidance_embeds", False))
        video = isinstance(transformer, SanaVideoTransformer)
        to_diffusers = video_engine_to_diffusers if video else engine_to_diffusers
        self._class_name = VIDEO_CLASS_NAME if video else "SanaTransformer2DModel"  # what each LoRA is checked against
        self._to_diffusers: Callable[[dict], dict] = lambda state: to_diffusers(state, guidance)
        self._to_engine: Callable[[dict], dict] = diffusers_to_engine
        self._params = dict(transformer.named_parameters())
        self._owner: dict[str, str] = {}  # diffusers weight name -> the engine parameter holding it
        for name, param in self._params.items():
            for part in self._to_diffusers({name: param.detach()}):
                self._owner[part] = name
        self._base: dict[str, torch.Tensor] = {}  # engine name -> its base value, while a LoRA is merged
        self.active: tuple[str, float] | None = None

    def check(self) -> None:
        """Every allowed LoRA fits this DiT (targets and shapes); SanaError naming the first that does not."""
        for entry in self.allowed.values():
            self._merged(entry, entry.scale)

    def use(self, name: str | None, scale: float | None = None) -> None:
        """Make the DiT's weights the base ones plus LoRA `name` at `scale` (None: its default), or the base
        weights alone for `name` None. A no-op when that is what is merged already."""
        wanted = None if name is None else (name, self.allowed[name].scale if scale is None else float(scale))
        if wanted == self.active:
            return
        self._restore()
        if wanted is not None:
            import torch

            merged = self._merged(self.allowed[name], wanted[1])
            with torch.no_grad():
                for key, value in merged.items():
                    param = self._params[key]
                    self._base[key] = param.detach().clone()
                    param.copy_(value.to(param.dtype))
            self.active = wanted

    def _restore(self) -> None:
        import torch

        with torch.no_grad():
            for key, value in self._base.items():
                self._params[key].copy_(value)
        self._base = {}
        self.active = None

    def _merged(self, entry: AllowedLora, scale: float) -> dict[str, torch.Tensor]:
        """engine parameter name -> its value with the LoRA merged (only the parameters it changes)."""
        from ..lora import merge_loras, read_lora

        modules, _ = read_lora(entry.path)
        owners = set()
        for module in modules:
            owner = self._owner.get(f"{module}.weight")
            if owner is None:
                raise SanaError(f"LoRA '{entry.name}' ({entry.path.name}) targets '{module}', which this model "
                                "does not have", "the LoRA was trained for another model")
            owners.add(owner)
        # Base values in the diffusers names the LoRA targets (a fused q/k/v parameter gives all its parts);
        # with their storage still the live parameters', so they are cloned first.
        state = {k: v.clone() for k, v in self._to_diffusers({o: self._params[o].detach() for o in owners}).items()}
        merge_loras(state, [(entry.path, scale)], self._class_name)
        merged = self._to_engine(state)
        for key, value in merged.items():
            if key not in self._params or value.shape != self._params[key].shape:
                raise SanaError(f"LoRA '{entry.name}' does not fit this model's '{key}'",
                                "the LoRA was trained for another model")
        return merged


def parse_allowed(text: str) -> tuple[str, str, float]:
    """`NAME=PATH[:SCALE]` -> (name, path text, scale); ValueError with what is wrong."""
    import math
    import re

    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ValueError(f"--lora {text}: expected NAME=PATH[:SCALE]")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"--lora {text}: the name '{name}' must be letters, digits, '_', '-' or '.' (64 at most)")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head and not Path(rest).expanduser().exists():
        try:
            scale = float(tail)
        except ValueError:
            raise ValueError(f"--lora {text}: the scale '{tail}' is not a number") from None
        if not math.isfinite(scale):
            raise ValueError(f"--lora {text}: the scale {tail} is not a finite number")
        path = head
    return name, path, scale


@dataclass(frozen=True)
class AllowList:
    """The allow-listed LoRAs a model takes, where its DiT lives in worker processes (`--gpus`): names and scales
    for admission; the merging happens there."""

    allowed: dict[str, AllowedLora]
