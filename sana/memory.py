"""The memory planner: where each component lives, in which dtype, and how the VAE decodes, from the device's
memory and the components' sizes, before anything loads.

`plan_memory` is a pure function of a `DeviceInfo` (sana.device), `ComponentSizes` and a `Workload`; it returns
a `MemoryPlan` that `sana.placement` carries out and that `MemoryPlan.lower` steps down after an out-of-memory
error. Placement tiers, most to least GPU memory:

    high      everything resident on the GPU
    balanced  the text encoder leaves the GPU after encoding (DiT and VAE stay)
    low       each component is on the GPU only while it runs (component offload)
    minimal   low, with the DiT's blocks streamed from (pinned) CPU memory one block ahead

Independently the text encoder may run on the CPU (when it does not fit the GPU even alone), and the VAE
decodes in tiles as large as the memory left allows (tiling costs little when tiles are large).

Sizes come from safetensors headers and configs (`sizes_from_directory`), the registry preset when no weights
are present (`sizes_from_spec`), or live modules (`sizes_of_modules`). Activation estimates are calibrated on an
H100 (torch 2.11, real configs, bf16, 2026-11-27); see the constants below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .device import GiB, DeviceInfo
from .errors import UsageError

TIERS = ("high", "balanced", "low", "minimal")
MODES = ("auto", *TIERS)
PHASES = ("encode", "denoise", "decode")
# (tier, text encoder on the CPU), most device memory first. The text encoder moves to the CPU only when it does
# not fit the GPU even alone; ("high", True) keeps the DiT and the VAE resident around a CPU text encoder.
LADDER = (("high", False), ("balanced", False), ("low", False), ("high", True), ("low", True), ("minimal", False),
          ("minimal", True))
COMPONENTS = ("text_encoder", "transformer", "vae")
TIER_SUMMARY = {
    "high": "everything resident",
    "balanced": "text encoder leaves the GPU after encoding",
    "low": "each component on the GPU only while it runs",
    "minimal": "component offload, transformer blocks streamed from CPU memory",
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# -- estimates (H100, torch 2.11, bf16, real 1.6B / Gemma-2-2B / DC-AE configs, 2026-11-27) ------------------

# Peak live activations of one DiT forward, in [rows, tokens, inner_dim] tensors of the compute dtype.
# Measured 10.5-10.8 with the Triton kernels and 18.0-23.0 with the PyTorch references (the reference Mix-FFN
# middle and linear attention run in fp32); linear attention keeps this linear in the token count.
DIT_WIDTHS_KERNELS = 12
DIT_WIDTHS_REFERENCE = 24
# Gemma-2 encoding one prompt: bytes per token in units of hidden-size vectors (measured 40-45: 117 MiB at 600
# tokens). Prompts are encoded one at a time, 300 tokens after an instruction prefix of up to ~300.
TEXT_WIDTHS_PER_TOKEN = 48
TEXT_TOKENS = 600
# DC-AE decode (`sana.models.dcae`): activation elements per output pixel, per channel of the decoder's
# full-resolution stage. With the Triton kernels (fused norm + residual, phase-assembled up blocks) measured
# 1168-1280 B/px in bf16 for f32c32's 128 channels (18.3 GiB untiled at 4096 px), i.e. 4.6-5.0; the PyTorch
# references take fp32 squares for the norms, as diffusers' decoder does (1666 B/px, 6.5).
DECODE_WIDTHS_KERNELS = 5.2
DECODE_WIDTHS_REFERENCE = 6.6
# Around the tiles: decoded tiles kept for blending (3 channels, VAE dtype) and the fp32 post-processing.
DECODE_OUTPUT_BYTES_PER_PIXEL = 3 * (2 * 2 + 4)

# The allocator's rounding and fragmentation, cuBLAS/cuDNN workspaces: kept free out of what the device offers.
HEADROOM_FRACTION = 0.08
HEADROOM_BYTES = 256 << 20
# Tiles cost their overlap: at 4096 px on the H100 the decode takes 0.96 s whole, 1.01 s in 2x2 tiles of 2176 px,
# 1.13 s in 3x3 of 1504 px, 1.26 s in 4x4 of 1152 px, while moving the text encoder off the GPU costs ~0.1 s. So
# the planner first looks for a tier that allows tiles of at least GOOD_TILE_PX, and only then accepts smaller.
GOOD_TILE_PX = 1280
MIN_TILE_PX = 512
TILE_OVERLAP_PX = 128
# Tiles an out-of-memory decode steps through, largest first.
TILE_LADDER_PX = (3072, 2048, 1536, 1024, 768, 512)
# CUDA graphs only pay off where a step is launch-bound (1024 px class: 14.3 vs 16.6 ms, none at 2048 px and
# above), and the captured pool keeps one forward's activations allocated for good.
GRAPH_MAX_TOKENS = 48 * 48
# Pinning locks pages: at most this share of the available RAM, the DiT blocks first (they move every step).
PIN_RAM_FRACTION = 0.5


# ---------------------------------------------------------------------------------------------------------
# Sizes and workload
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComponentSizes:
    """Parameter counts and the shape figures the activation estimates need."""

    transformer_params: int
    block_params: int  # one DiT block (all blocks hold the same tensors)
    blocks: int
    inner_dim: int  # DiT width
    text_encoder_params: int
    text_hidden: int  # Gemma-2 hidden size
    vae_decoder_params: int  # only the decoder is needed to generate
    vae_scale_factor: int  # pixels per latent along a side
    vae_decoder_width: int  # channels of the decoder's full-resolution stage
    native_resolution: int  # px the model was trained at
    source: str  # "weights" | "registry" | "modules"


@dataclass(frozen=True)
class Workload:
    """What one generation asks of the device."""

    width: int  # px the DiT and the VAE run at (after aspect-ratio binning)
    height: int
    images: int = 1  # decoded one at a time
    rows: int = 2  # DiT batch: images x (1 + CFG + PAG)


def transformer_sizes(config: dict) -> tuple[int, int, int, int]:
    """(params, params of one block, blocks, width) of our DiT for a `config.json` dict, built on the meta device."""
    import torch

    from .models.transformer import SanaTransformer, TransformerConfig

    cfg = TransformerConfig.from_dict(config)
    with torch.device("meta"):
        model = SanaTransformer(cfg)
    block = sum(p.numel() for p in model.blocks[0].parameters()) if cfg.num_layers else 0
    return sum(p.numel() for p in model.parameters()), block, cfg.num_layers, cfg.inner_dim


def with_fp8_blocks(sizes: ComponentSizes, config: dict) -> ComponentSizes:
    """`sizes` for a DiT whose block linears hold fp8 weights (`sana.models.fp8`; bf16 compute): the transformer's
    and a block's "params" become their bytes over 2, so the planner's bf16 arithmetic counts them right."""
    import torch

    from .models.fp8 import quantize_blocks_fp8
    from .models.transformer import SanaTransformer, TransformerConfig

    with torch.device("meta"):
        model = SanaTransformer(TransformerConfig.from_dict(config)).to(torch.bfloat16)
    quantize_blocks_fp8(model)

    def half_bytes(module) -> int:
        tensors = [*module.parameters(), *module.buffers()]
        return math.ceil(sum(t.numel() * t.element_size() for t in tensors) / 2)

    block = half_bytes(model.blocks[0]) if len(model.blocks) else 0
    return replace(sizes, transformer_params=half_bytes(model), block_params=block)


def vae_decoder_sizes(config: dict) -> tuple[int, int, int]:
    """(decoder params, scale factor, full-resolution channels) of a DC-AE config, from our decoder built on the
    meta device."""
    import torch

    from .models.dcae import DCAEConfig, DCAEDecoder

    try:
        cfg = DCAEConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        from .errors import SanaError

        raise SanaError(f"unsupported VAE config: {exc}") from None
    with torch.device("meta"):
        decoder = DCAEDecoder(cfg)
    params = sum(p.numel() for p in decoder.parameters())
    return params, cfg.spatial_compression_ratio, int(cfg.decoder_block_out_channels[0])


def sizes_from_spec(spec) -> ComponentSizes:
    """From a registry preset alone (no weights on disk): every image model pairs Gemma-2-2B with DC-AE f32c32."""
    from .benchmark import DCAE_F32C32, GEMMA2_2B

    params, block, blocks, width = transformer_sizes(spec.transformer)
    decoder, scale, channels = vae_decoder_sizes(DCAE_F32C32)
    return ComponentSizes(
        transformer_params=params, block_params=block, blocks=blocks, inner_dim=width,
        text_encoder_params=int(spec.params["text_encoder"]), text_hidden=GEMMA2_2B["hidden_size"],
        vae_decoder_params=decoder, vae_scale_factor=scale, vae_decoder_width=channels,
        native_resolution=spec.resolution, source="registry",
    )


def sizes_from_directory(model_dir: Path, *, transformer_config: dict | None = None) -> ComponentSizes:
    """From a diffusers-format folder: configs, and parameter counts from safetensors headers (no tensor is read)."""
    from .components import read_json
    from .hub import local_components

    t_config = transformer_config or read_json(model_dir / "transformer" / "config.json")
    try:
        params, block, blocks, width = transformer_sizes(t_config)
    except (TypeError, ValueError) as exc:
        from .errors import SanaError

        raise SanaError(f"unsupported transformer config: {exc}") from None
    decoder, scale, channels = vae_decoder_sizes(read_json(model_dir / "vae" / "config.json"))
    text_config = read_json(model_dir / "text_encoder" / "config.json")
    found = {c.name: c for c in local_components(model_dir)}
    text = found.get("text_encoder")
    if text is not None and text.params is not None:
        text_params = text.params
    else:  # .bin weights only: assume half-precision storage
        text_params = (text.size_on_disk if text else 0) // 2
    return ComponentSizes(
        transformer_params=params, block_params=block, blocks=blocks, inner_dim=width,
        text_encoder_params=text_params, text_hidden=int(text_config.get("hidden_size", 2304)),
        vae_decoder_params=decoder, vae_scale_factor=scale, vae_decoder_width=channels,
        native_resolution=int(t_config.get("sample_size", 32)) * scale, source="weights",
    )


def sizes_of_modules(transformer, text_model, vae) -> ComponentSizes:
    """From loaded modules (our DiT, the Gemma-2 model or None, our DC-AE decoder)."""
    cfg = transformer.config
    scale = vae.spatial_compression_ratio
    return ComponentSizes(
        transformer_params=sum(p.numel() for p in transformer.parameters()),
        block_params=sum(p.numel() for p in transformer.blocks[0].parameters()) if len(transformer.blocks) else 0,
        blocks=len(transformer.blocks), inner_dim=cfg.inner_dim,
        text_encoder_params=sum(p.numel() for p in text_model.parameters()) if text_model is not None else 0,
        text_hidden=int(getattr(getattr(text_model, "config", None), "hidden_size", 0)),
        vae_decoder_params=sum(p.numel() for p in vae.parameters()), vae_scale_factor=scale,
        vae_decoder_width=int(vae.config.decoder_block_out_channels[0]),
        native_resolution=cfg.sample_size * scale, source="modules",
    )


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": GiB, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}


def parse_memory_size(text: str) -> int:
    """`--max-vram`: `8G`, `8GB`, `7.5GiB`, `6000M` -> bytes; binary units, and a bare number means GiB."""
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise UsageError(f"cannot read --max-vram '{text}'", "use e.g. 8G, 7.5GiB or 6000M (binary units)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 256 << 20:
        raise UsageError(f"--max-vram {text} is too small", "sana needs at least 256 MiB of GPU memory")
    return int(value)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown memory mode '{mode}'", f"use {', '.join(MODES)}")
    return mode


# ---------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanRow:
    """One line of the printed plan."""

    component: str
    dtype: str
    where: str
    peak: int | None  # predicted device memory while this component runs, bytes; None when it runs on the CPU


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives per phase, dtypes and the VAE tile; predictions are derived on demand."""

    device: DeviceInfo
    sizes: ComponentSizes
    work: Workload
    dtype: str  # compute dtype of the DiT and the VAE (and of the text encoder on the GPU)
    tier: str
    text_encoder_on_cpu: bool = False
    text_encoder_dtype: str | None = None  # None: the compute dtype
    decode_tile: int | None = None  # largest tile side in px; None decodes the whole image at once
    cuda_graphs: bool = False
    pinned: frozenset[str] = frozenset()  # components whose host copy is page-locked
    budget: int = 0  # bytes sana may use on the compute device
    cap: int | None = None  # --max-vram
    chosen_by: str = "auto"  # "auto", "--memory low", "default"
    fallbacks: tuple[str, ...] = ()
    # The caller placed the modules (e.g. a training loop's model): out-of-memory fallbacks only shrink the tiles.
    fixed_placement: bool = False

    # -- residency ------------------------------------------------------------------------------------

    @property
    def te_dtype(self) -> str:
        return self.text_encoder_dtype or self.dtype

    @property
    def streams_blocks(self) -> bool:
        return self.device.is_accelerator and self.tier == "minimal"

    def home(self, component: str) -> str:
        """Where a component's weights live between its uses: "device", "host", "streamed" or "cpu"."""
        if not self.device.is_accelerator:
            return "device"
        if component == "text_encoder":
            if self.text_encoder_on_cpu:
                return "cpu"
            return "device" if self.tier == "high" else "host"
        if component == "transformer":
            return {"high": "device", "balanced": "device", "low": "host", "minimal": "streamed"}[self.tier]
        return "device" if self.tier in ("high", "balanced") else "host"

    def on_device(self, phase: str) -> frozenset[str]:
        """Components whose weights are on the compute device during `phase`."""
        if self.tier in ("high", "balanced") or not self.device.is_accelerator:
            held = set(COMPONENTS)
            if self.tier == "balanced" and phase != "encode":
                held.discard("text_encoder")
        else:
            held = {{"encode": "text_encoder", "denoise": "transformer", "decode": "vae"}[phase]}
        if self.text_encoder_on_cpu:
            held.discard("text_encoder")
        return frozenset(held)

    # -- predictions (bytes on the compute device) ----------------------------------------------------------

    def weights(self, component: str) -> int:
        s, width = self.sizes, DTYPE_BYTES[self.dtype]
        if component == "text_encoder":
            return 0 if self.text_encoder_on_cpu else s.text_encoder_params * DTYPE_BYTES[self.te_dtype]
        if component == "transformer":
            if self.streams_blocks:  # the rest resident, two block slots (one running, one arriving)
                return (s.transformer_params - s.blocks * s.block_params + 2 * s.block_params) * width
            return s.transformer_params * width
        return s.vae_decoder_params * width

    def activations(self, phase: str) -> int:
        s, w = self.sizes, self.work
        width = DTYPE_BYTES[self.dtype]
        if phase == "encode":
            if self.text_encoder_on_cpu:
                return 0
            return TEXT_TOKENS * s.text_hidden * TEXT_WIDTHS_PER_TOKEN * DTYPE_BYTES[self.te_dtype]
        if phase == "denoise":
            return dit_activations(s, w, width, kernels=self.device.kernels)
        return decode_activations(s, w, width, self.decode_tile, kernels=self.device.kernels)

    def peak(self, phase: str) -> int:
        total = sum(self.weights(c) for c in self.on_device(phase)) + self.activations(phase)
        if phase == "decode" and self.cuda_graphs:  # the captured graph's pool stays allocated
            total += self.activations("denoise")
        return total

    @property
    def peak_bytes(self) -> int:
        return max(self.peak(p) for p in PHASES)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget

    def host_bytes(self) -> int:
        """Host RAM the placement holds (copies of offloaded components, the CPU text encoder)."""
        if not self.device.is_accelerator:
            return 0
        s, width = self.sizes, DTYPE_BYTES[self.dtype]
        held = {"text_encoder": s.text_encoder_params * DTYPE_BYTES[self.te_dtype],
                "transformer": s.transformer_params * width, "vae": s.vae_decoder_params * width}
        return sum(b for c, b in held.items() if self.home(c) != "device")

    # -- stepping down after an out-of-memory error ------------------------------------------------------

    def lower(self, phase: str) -> "MemoryPlan | None":
        """The next plan that needs less device memory in `phase`, or None when nothing lower exists.

        A decode first tries smaller tiles; every phase then steps to the first lower tier (or the text
        encoder on the CPU) whose prediction for that phase is smaller. Steps are sticky: a later phase
        never climbs back up.
        """
        if phase == "decode":
            tile = _smaller_tile(self.decode_tile, self.work, self.sizes.vae_scale_factor)
            if tile is not None:
                return replace(self, decode_tile=tile, fallbacks=(*self.fallbacks, f"decode: {tile} px tiles"))
        if not self.device.is_accelerator or self.fixed_placement:
            return None
        now = self.peak(phase)
        for tier, on_cpu in LADDER:
            if TIERS.index(tier) < TIERS.index(self.tier) or on_cpu < self.text_encoder_on_cpu:
                continue
            if (tier, on_cpu) == (self.tier, self.text_encoder_on_cpu):
                continue
            candidate = self._variant(tier, on_cpu, self.decode_tile)
            if candidate.peak(phase) < now:
                return replace(candidate, fallbacks=(*self.fallbacks, f"{phase}: {candidate.label()}"))
        return None

    def _variant(self, tier: str, text_on_cpu: bool, tile: int | None) -> "MemoryPlan":
        plan = replace(self, tier=tier, text_encoder_on_cpu=text_on_cpu, decode_tile=tile,
                       text_encoder_dtype=_cpu_text_dtype(self) if text_on_cpu else None)
        plan = replace(plan, cuda_graphs=self.cuda_graphs and plan.home("transformer") == "device")
        return replace(plan, pinned=_pinned(plan))

    # -- reporting ---------------------------------------------------------------------------------------

    def rows(self) -> list[PlanRow]:
        s = self.sizes
        names = {"text_encoder": f"text encoder ({_count(s.text_encoder_params)} params)",
                 "transformer": f"transformer ({_count(s.transformer_params)} params)",
                 "vae": f"VAE decoder ({_count(s.vae_decoder_params)} params)"}
        dtypes = {"text_encoder": self.te_dtype, "transformer": self.dtype, "vae": self.dtype}
        phases = {"text_encoder": "encode", "transformer": "denoise", "vae": "decode"}
        return [PlanRow(names[c], dtypes[c], self.where(c), None if self.home(c) == "cpu" else self.peak(phases[c]))
                for c in COMPONENTS]

    def where(self, component: str) -> str:
        gpu = {"cuda": "GPU", "mps": "GPU (MPS)", "cpu": "CPU"}[self.device.kind]
        host = "CPU memory" + (" (pinned)" if component in self.pinned else "")
        verb = {"text_encoder": "encode", "transformer": "denoise", "vae": "decode"}[component]
        home = self.home(component)
        if home == "cpu":
            text = "CPU (encodes there; embeddings go to the GPU)"
        elif home == "streamed":
            text = f"{host}, streamed to the {gpu} block by block"
        elif home == "host":
            text = f"{host}, on the {gpu} to {verb}"
        else:
            text = gpu
        if component == "vae":
            text += "; " + self.tile_description()
        return text

    def tile_description(self) -> str:
        geometry = tile_geometry(self.work, self.sizes.vae_scale_factor, self.decode_tile)
        if geometry is None:
            return "whole image"
        (tile_h, stride_h), (tile_w, stride_w) = geometry
        f = self.sizes.vae_scale_factor
        rows = math.ceil(self.work.height / (stride_h * f))
        cols = math.ceil(self.work.width / (stride_w * f))
        side = f"{tile_w * f}x{tile_h * f}" if tile_w != tile_h else f"{tile_w * f}"
        return f"{cols}x{rows} tiles of {side} px"

    def label(self) -> str:
        """The tier as a user would force it, e.g. "--memory low, text encoder on the CPU"."""
        return f"--memory {self.tier}" + (", text encoder on the CPU" if self.text_encoder_on_cpu else "")

    def summary(self) -> str:
        """What the tier does, e.g. "each component on the GPU only while it runs; text encoder on the CPU"."""
        if self.tier == "high" and self.text_encoder_on_cpu:
            return "transformer and VAE resident, text encoder on the CPU"
        return TIER_SUMMARY[self.tier] + ("; text encoder on the CPU" if self.text_encoder_on_cpu else "")

    def headline(self) -> str:
        """One line: tier, why, and the numbers."""
        if not self.device.is_accelerator:
            text = (f"memory: everything on the CPU ({self.dtype}); predicted peak {_gib(self.peak_bytes)} of "
                    f"{_gib(self.budget)} usable RAM")
            return text if self.fits else text + " - does not fit: expect swapping or an out-of-memory error"
        cap = f", capped at {_gib(self.cap)}" if self.cap else ""
        text = (f"memory: {self.tier} ({self.summary()}), {self.chosen_by}; predicted peak "
                f"{_gib(self.peak_bytes)} of {_gib(self.budget)} usable{cap}")
        return text if self.fits else text + " - does not fit: out-of-memory fallbacks will step down"

    def notes(self) -> list[str]:
        notes = []
        if self.device.is_accelerator and self.host_bytes() > self.device.ram_available:
            notes.append(f"the offloaded weights ({_gib(self.host_bytes())}) exceed the free RAM "
                         f"({_gib(self.device.ram_available)}); expect swapping")
        unpinned = [c for c in COMPONENTS if self.home(c) in ("host", "streamed") and c not in self.pinned]
        if unpinned:
            notes.append("not enough free RAM to pin " + ", ".join(c.replace("_", " ") for c in unpinned)
                         + "; its transfers run at pageable-memory speed")
        if self.cuda_graphs:
            notes.append("the denoising step is replayed from a CUDA graph")
        return notes

    def record(self) -> dict:
        """The plan as stored in an image's metadata (`sana info` shows one row per key)."""
        record = {"tier": self.tier if self.device.is_accelerator else "cpu", "chosen": self.chosen_by,
                  "device": self.device.describe(), "dtype": self.dtype,
                  "text encoder": f"{self.where('text_encoder')} ({self.te_dtype})",
                  "transformer": self.where("transformer"), "vae": self.where("vae"),
                  "predicted peak": _gib(self.peak_bytes), "usable": _gib(self.budget)}
        if self.cap:
            record["cap"] = _gib(self.cap)
        if self.fallbacks:
            record["fallbacks"] = "; ".join(self.fallbacks)
        return record


# ---------------------------------------------------------------------------------------------------------
# Estimates
# ---------------------------------------------------------------------------------------------------------

def dit_activations(sizes: ComponentSizes, work: Workload, dtype_bytes: int, *, kernels: bool) -> int:
    """Peak activations of one DiT forward: linear in the tokens (linear attention), plus the latents."""
    f = sizes.vae_scale_factor
    tokens = (work.height // f) * (work.width // f)
    widths = DIT_WIDTHS_KERNELS if kernels else DIT_WIDTHS_REFERENCE
    return work.rows * tokens * sizes.inner_dim * widths * dtype_bytes


def decode_pixel_bytes(sizes: ComponentSizes, dtype_bytes: int, *, kernels: bool) -> float:
    """Decode activations per pixel of the image (or tile) in flight."""
    widths = DECODE_WIDTHS_KERNELS if kernels else DECODE_WIDTHS_REFERENCE
    return widths * sizes.vae_decoder_width * dtype_bytes


def decode_activations(sizes: ComponentSizes, work: Workload, dtype_bytes: int, tile: int | None, *,
                       kernels: bool) -> int:
    """Peak of one image's decode: the largest tile's activations (the whole image untiled) plus the output."""
    per_pixel = decode_pixel_bytes(sizes, dtype_bytes, kernels=kernels)
    geometry = tile_geometry(work, sizes.vae_scale_factor, tile)
    f = sizes.vae_scale_factor
    area = work.width * work.height if geometry is None else geometry[0][0] * geometry[1][0] * f * f
    return int(area * per_pixel) + work.width * work.height * DECODE_OUTPUT_BYTES_PER_PIXEL


def tile_geometry(work: Workload, scale: int, tile: int | None):
    """((tile, stride) along the height, (tile, stride) along the width) in latents, or None for one piece.

    Tiles are at most `tile` px and overlap by at least TILE_OVERLAP_PX; the stride is chosen so that the tiles
    spread evenly and no sliver of a tile is left at the far edge (diffusers' loop starts a tile at every stride).
    """
    if tile is None:
        return None
    max_tile = max(1, tile // scale)
    overlap = max(1, min(TILE_OVERLAP_PX // scale, max_tile // 4))
    axes = (_axis(work.height // scale, max_tile, overlap), _axis(work.width // scale, max_tile, overlap))
    if all(t == size for (t, _), size in zip(axes, (work.height // scale, work.width // scale))):
        return None
    return axes


def _axis(size: int, max_tile: int, overlap: int) -> tuple[int, int]:
    """(tile, stride) for one side: the fewest tiles of at most `max_tile` whose last one adds more than the
    overlap (diffusers starts a tile at every stride, so a stride too short leaves a useless sliver)."""
    if size <= max_tile:
        return size, size
    for count in range(math.ceil((size - overlap) / (max_tile - overlap)), size + 1):
        stride = math.ceil(size / count)
        if stride + overlap <= max_tile and size - (count - 1) * stride > overlap:
            return stride + overlap, stride
    return max_tile, max_tile - overlap  # tiles of a few latents: accept a sliver


def _smaller_tile(tile: int | None, work: Workload, scale: int) -> int | None:
    """The next tile of the ladder below the current one (the image's longer side when untiled)."""
    current = tile if tile is not None else max(work.width, work.height)
    smaller = [t for t in TILE_LADDER_PX if t < current]
    if smaller:
        return smaller[0]
    if tile is None:  # a small image: the smallest tile (it decodes in one piece, as the last resort before tiers)
        return TILE_LADDER_PX[-1]
    return None


# ---------------------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------------------

def usable_memory(device: DeviceInfo, cap: int | None) -> int:
    """What sana may allocate: the free memory (or the cap, if lower) less the allocator's headroom."""
    limit = device.free_memory if cap is None else min(cap, device.free_memory)
    return max(0, int(limit * (1 - HEADROOM_FRACTION)) - HEADROOM_BYTES)


def plan_memory(device: DeviceInfo, sizes: ComponentSizes, work: Workload, *, mode: str = "auto",
                max_vram: int | None = None, dtype: str = "auto") -> MemoryPlan:
    """Choose dtype, placement tier, text-encoder device and VAE tile for `work` on `device`.

    `mode` "auto" takes the highest tier whose predicted peak fits, preferring tiers that keep VAE tiles at
    least GOOD_TILE_PX; a tier name forces that tier (the text encoder and the tiles still adapt). When nothing
    fits, the most frugal plan comes back with `fits` False.
    """
    from .device import DTYPE_NAMES, dtype_for

    check_mode(mode)
    compute = DTYPE_NAMES[dtype_for(device, dtype)]
    cap = max_vram if device.is_accelerator else None
    budget = usable_memory(device, cap)
    graphs = device.kind == "cuda" and _tokens(sizes, work) <= GRAPH_MAX_TOKENS
    base = MemoryPlan(device=device, sizes=sizes, work=work, dtype=compute, tier="high", budget=budget, cap=cap,
                      cuda_graphs=graphs, chosen_by="auto" if mode == "auto" else f"--memory {mode}")
    if not device.is_accelerator:
        plan = replace(base, chosen_by="the CPU", cuda_graphs=False)
        tile = _fit_tile(plan, MIN_TILE_PX)
        return replace(plan, decode_tile=MIN_TILE_PX if tile is False else tile)

    candidates = LADDER if mode == "auto" else ((mode, False), (mode, True))
    for min_tile in (GOOD_TILE_PX, MIN_TILE_PX):
        for tier, on_cpu in candidates:
            plan = base._variant(tier, on_cpu, None)
            tile = _fit_tile(plan, min_tile)
            if tile is not False:
                return replace(plan, decode_tile=tile)
    # Nothing fits: the most frugal candidate, smallest tiles; out-of-memory fallbacks take it from there.
    tier, on_cpu = candidates[-1]
    return base._variant(tier, on_cpu, MIN_TILE_PX)


def resident_plan(device: DeviceInfo, sizes: ComponentSizes, work: Workload, dtype: str, *,
                  cuda_graphs: bool) -> MemoryPlan:
    """The modules stay where the caller put them, whole-image decode, tiles only after an out-of-memory error:
    the pipeline's behaviour when no plan is given."""
    return MemoryPlan(device=device, sizes=sizes, work=work, dtype=dtype, tier="high", decode_tile=None,
                      cuda_graphs=cuda_graphs and device.kind == "cuda", budget=usable_memory(device, None),
                      chosen_by="default", fixed_placement=True)


def _fit_tile(plan: MemoryPlan, min_tile: int) -> int | None | bool:
    """None when the other phases fit and the whole image decodes within the budget, else the largest tile
    (>= min_tile px) that fits; False when the plan does not fit at all."""
    if max(plan.peak("encode"), plan.peak("denoise")) > plan.budget:
        return False
    if plan.peak("decode") <= plan.budget:  # decode_tile is None here: the whole image
        return None
    room = plan.budget - (plan.peak("decode") - plan.activations("decode")) - (
        plan.work.width * plan.work.height * DECODE_OUTPUT_BYTES_PER_PIXEL)
    per_pixel = decode_pixel_bytes(plan.sizes, DTYPE_BYTES[plan.dtype], kernels=plan.device.kernels)
    if room <= 0:
        return False
    f = plan.sizes.vae_scale_factor
    tile = int(math.sqrt(room / per_pixel)) // f * f
    geometry = tile_geometry(plan.work, f, tile) if tile >= f else None
    # The tiles actually decoded spread evenly and may be smaller than the largest that fits.
    smallest_acceptable = min(min_tile, max(plan.work.width, plan.work.height))
    if geometry is None or max(geometry[0][0], geometry[1][0]) * f < smallest_acceptable:
        return False
    return tile


def _cpu_text_dtype(plan: MemoryPlan) -> str:
    """fp32 on the CPU when the RAM holds it (half-precision matmuls are slow on most CPUs), else bf16."""
    need_fp32 = plan.sizes.text_encoder_params * 4
    others = (plan.sizes.transformer_params + plan.sizes.vae_decoder_params) * DTYPE_BYTES[plan.dtype]
    return "fp32" if need_fp32 + others <= plan.device.ram_available * 0.8 else "bf16"


def _pinned(plan: MemoryPlan) -> frozenset[str]:
    """Components whose host copies are page-locked: in order of how often they move, within the RAM share."""
    if plan.device.kind != "cuda":
        return frozenset()
    s, width = plan.sizes, DTYPE_BYTES[plan.dtype]
    sizes = {"transformer": s.transformer_params * width,
             "text_encoder": s.text_encoder_params * DTYPE_BYTES[plan.te_dtype],
             "vae": s.vae_decoder_params * width}
    allowance = plan.device.ram_available * PIN_RAM_FRACTION
    pinned = []
    for component in ("transformer", "vae", "text_encoder"):
        if plan.home(component) in ("host", "streamed") and sizes[component] <= allowance:
            pinned.append(component)
            allowance -= sizes[component]
    return frozenset(pinned)


def _tokens(sizes: ComponentSizes, work: Workload) -> int:
    f = sizes.vae_scale_factor
    return (work.height // f) * (work.width // f)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.1f} GiB"


def _count(params: int) -> str:
    if params >= 1e9:
        return f"{params / 1e9:.2f}B"
    return f"{params / 1e6:.0f}M" if params >= 1e6 else f"{params / 1e3:.1f}k"
