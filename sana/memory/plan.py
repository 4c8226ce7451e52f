"""The plan: where each component lives per phase, dtypes and how the VAE decodes; chosen by `plan_memory`.

Placement tiers, most to least GPU memory:

    high      everything resident on the GPU
    balanced  the text encoder leaves the GPU after encoding (DiT and VAE stay)
    low       each component is on the GPU only while it runs (component offload)
    minimal   low, with the DiT's blocks streamed from (pinned) CPU memory one block ahead

Independently the text encoder may run on the CPU (when it does not fit the GPU even alone), and the VAE
decodes in tiles as large as the memory left allows (tiling costs little when tiles are large). Clips add
temporal pieces (LTX-2) to the tiles. Phases: "encode" (text encoder), "condition" (the VAE encodes a first
frame: image-to-video and the world model), "denoise" (DiT), "decode" (VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..units import GiB
from . import estimates as est
from . import fitting, tiles
from .clips import clip_shape, describe_clip
from .estimates import DTYPE_BYTES
from .fitting import GOOD_PIECE_FRAMES  # noqa: F401
from .options import MODES, TIERS, check_mode, parse_memory_size  # noqa: F401 (the package's names)
from .sizes import ComponentSizes, Workload

if TYPE_CHECKING:
    from ..device import DeviceInfo

PHASES = ("encode", "condition", "denoise", "decode")
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
RUNS_IN = {"encode": "text_encoder", "condition": "vae", "denoise": "transformer", "decode": "vae"}
VAE_NAMES = {"dcae": "DC-AE", "wan": "Wan 2.1", "ltx2": "LTX-2"}

# The allocator's rounding and fragmentation, cuBLAS/cuDNN workspaces: kept free out of what the device offers.
HEADROOM_FRACTION = 0.08
HEADROOM_BYTES = 256 << 20
# CUDA graphs only pay off where a step is launch-bound (1024 px class: 14.3 vs 16.6 ms, none at 2048 px and
# above), and the captured pool keeps one forward's activations allocated for good.
GRAPH_MAX_TOKENS = 48 * 48
# Pinning locks pages: at most this share of the available RAM, the DiT blocks first (they move every step).
PIN_RAM_FRACTION = 0.5


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
    """Where each component lives per phase, dtypes and the VAE tiles; predictions are derived on demand."""

    device: DeviceInfo
    sizes: ComponentSizes
    work: Workload
    dtype: str  # compute dtype of the DiT and the VAE (and of the text encoder on the GPU)
    tier: str
    text_encoder_on_cpu: bool = False
    text_encoder_dtype: str | None = None  # None: the compute dtype
    decode_tile: int | None = None  # largest tile side in px; None decodes the whole image (frame) at once
    cuda_graphs: bool = False
    pinned: frozenset[str] = frozenset()  # components whose host copy is page-locked
    budget: int = 0  # bytes sana may use on the compute device
    cap: int | None = None  # --max-vram
    chosen_by: str = "auto"  # "auto", "--memory low", "default"
    fallbacks: tuple[str, ...] = ()
    # The caller placed the modules (e.g. a training loop's model): out-of-memory fallbacks only shrink the tiles.
    fixed_placement: bool = False
    vae_dtype: str | None = None  # None: the compute dtype (diffusers' video pipelines often decode in fp32)
    decode_frames: int | None = None  # LTX-2 temporal piece, pixel frames (diffusers' tile_sample_min_num_frames)

    # -- residency ------------------------------------------------------------------------------------

    @property
    def te_dtype(self) -> str:
        return self.text_encoder_dtype or self.dtype

    @property
    def vae_dt(self) -> str:
        return self.vae_dtype or self.dtype

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
            held = {RUNS_IN[phase]}
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
        return s.vae_decoder_params * DTYPE_BYTES[self.vae_dt]

    def activations(self, phase: str) -> int:
        s, w = self.sizes, self.work
        if phase == "encode":
            return 0 if self.text_encoder_on_cpu else est.text_activations(s, DTYPE_BYTES[self.te_dtype])
        if phase == "denoise":
            return (est.dit_activations(s, w, DTYPE_BYTES[self.dtype], kernels=self.device.kernels)
                    + est.text_context_bytes(s, w, DTYPE_BYTES[self.dtype], cuda_graphs=self.cuda_graphs))
        vae_bytes = DTYPE_BYTES[self.vae_dt]
        if phase == "condition":
            return est.condition_activations(s, w, vae_bytes, self.decode_tile)
        if s.is_clip:
            return est.clip_decode_activations(s, w, vae_bytes, self.decode_tile, self.decode_frames)
        return est.decode_activations(s, w, vae_bytes, self.decode_tile, kernels=self.device.kernels)

    def peak(self, phase: str) -> int:
        total = sum(self.weights(c) for c in self.on_device(phase)) + self.activations(phase)
        if phase == "decode" and self.cuda_graphs:  # the captured graph's pool stays allocated
            total += self.activations("denoise")
        return total

    @property
    def text_encoder_graphs(self) -> bool:
        """Whether the text encoder's forward may replay CUDA graphs: it stays on the device through every phase (a
        graph reads its weights where they were captured) and the budget holds its graphs' pool beside the peak."""
        if not (self.cuda_graphs and self.device.kind == "cuda") or self.text_encoder_on_cpu:
            return False
        if any("text_encoder" not in self.on_device(phase) for phase in PHASES):
            return False
        return self.peak_bytes + self.activations("encode") <= self.budget

    def fits_at_once(self, *phases: str) -> bool:
        """Whether `phases` fit the budget running at the same time (the decoder's warm-up beside the first
        denoising steps): the weights any of them holds on the device plus all their activations."""
        held = frozenset().union(*(self.on_device(p) for p in phases))
        return sum(self.weights(c) for c in held) + sum(self.activations(p) for p in phases) <= self.budget

    @property
    def peak_bytes(self) -> int:
        return max(self.peak(p) for p in PHASES)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget

    def needs(self) -> int:
        """Free device memory this plan would fit in (its peak plus the allocator's headroom)."""
        return math.ceil((self.peak_bytes + HEADROOM_BYTES) / (1 - HEADROOM_FRACTION))

    def host_bytes(self) -> int:
        """Host RAM the placement holds (copies of offloaded components, the CPU text encoder)."""
        if not self.device.is_accelerator:
            return 0
        held = {c: self._bytes(c) for c in COMPONENTS}
        return sum(b for c, b in held.items() if self.home(c) != "device")

    def _bytes(self, component: str) -> int:
        s = self.sizes
        return {"text_encoder": s.text_encoder_params * DTYPE_BYTES[self.te_dtype],
                "transformer": s.transformer_params * DTYPE_BYTES[self.dtype],
                "vae": s.vae_decoder_params * DTYPE_BYTES[self.vae_dt]}[component]

    # -- stepping down after an out-of-memory error ------------------------------------------------------

    def lower(self, phase: str) -> "MemoryPlan | None":
        """The next plan that needs less device memory in `phase`, or None when nothing lower exists.

        A decode first tries smaller pieces (LTX-2) and tiles; every phase then steps to the first lower tier (or
        the text encoder on the CPU) whose prediction for that phase is smaller. Steps are sticky: a later phase
        never climbs back up.
        """
        if phase == "decode" or (phase == "condition" and self.sizes.is_clip):
            smaller = self._smaller_decode(phase)
            if smaller is not None:
                return smaller
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

    def _smaller_decode(self, phase: str) -> "MemoryPlan | None":
        if not self.sizes.is_clip:
            tile = tiles.smaller_tile(self.decode_tile, self.work, self.sizes.vae_scale_factor)
            if tile is None:
                return None
            return replace(self, decode_tile=tile, fallbacks=(*self.fallbacks, f"decode: {tile} px tiles"))
        if phase == "decode" and self.sizes.vae_kind == "ltx2":
            piece = tiles.smaller_piece(self.decode_frames, clip_shape(self.sizes, self.work).frames)
            if piece is not None:
                return replace(self, decode_frames=piece,
                               fallbacks=(*self.fallbacks, f"decode: {piece}-frame pieces"))
        tile = tiles.smaller_video_tile(self.decode_tile, self.work)
        if tile is None:
            return None
        return replace(self, decode_tile=tile, fallbacks=(*self.fallbacks, f"{phase}: {tile} px tiles"))

    def _variant(self, tier: str, text_on_cpu: bool, tile: int | None) -> "MemoryPlan":
        on_device = HALF_GUARD_DTYPE if self.dtype == "fp16" else None
        plan = replace(self, tier=tier, text_encoder_on_cpu=text_on_cpu, decode_tile=tile,
                       text_encoder_dtype=_cpu_text_dtype(self) if text_on_cpu else on_device)
        plan = replace(plan, cuda_graphs=self.cuda_graphs and plan.home("transformer") == "device")
        return replace(plan, pinned=_pinned(plan))

    # -- reporting ---------------------------------------------------------------------------------------

    def rows(self) -> list[PlanRow]:
        s = self.sizes
        vae = (f"VAE ({VAE_NAMES[s.vae_kind]}, {_count(s.vae_decoder_params)} params)" if s.is_clip
               else f"VAE decoder ({_count(s.vae_decoder_params)} params)")
        names = {"text_encoder": f"text encoder ({_count(s.text_encoder_params)} params)",
                 "transformer": f"transformer ({_count(s.transformer_params)} params)", "vae": vae}
        dtypes = {"text_encoder": self.te_dtype, "transformer": self.dtype, "vae": self.vae_dt}
        rows = []
        for c in COMPONENTS:
            peak = max(self.peak(p) for p in PHASES if RUNS_IN[p] == c)
            rows.append(PlanRow(names[c], dtypes[c], self.where(c), None if self.home(c) == "cpu" else peak))
        return rows

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
        """How the VAE decodes, e.g. "2x2 tiles of 2176 px", or for a clip "pieces of 65 frames, whole frames"."""
        f = self.sizes.vae_scale_factor
        if not self.sizes.is_clip:
            geometry = tiles.tile_geometry(self.work, f, self.decode_tile)
            return "whole image" if geometry is None else tiles.tiles_text(self.work, f, geometry)
        geometry = tiles.video_tile_geometry(self.work, f, self.decode_tile)
        space = "whole frames" if geometry is None else tiles.tiles_text(self.work, f, geometry)
        decoded = clip_shape(self.sizes, self.work).frames
        if self.sizes.vae_kind == "wan":
            return f"a latent frame at a time (causal), {space}"
        if self.decode_frames is None or tiles.frames_in_flight(decoded, self.decode_frames) >= decoded:
            return f"all {decoded} frames at once, {space}"
        return f"pieces of {self.decode_frames + 1} frames, {space}"

    def clip(self, fps: float | None = None) -> str:
        """The workload in one line: frames, seconds at `fps`, latent grid and tokens (see `describe_clip`)."""
        return describe_clip(self.sizes, self.work, fps if fps is not None else self.work.fps)

    def label(self) -> str:
        """The tier as a user would force it, e.g. "--memory low, text encoder on the CPU"."""
        return f"--memory {self.tier}" + (", text encoder on the CPU" if self.text_encoder_on_cpu else "")

    def summary(self) -> str:
        """What the tier does, e.g. "each component on the GPU only while it runs; text encoder on the CPU"."""
        if self.tier == "high" and self.text_encoder_on_cpu:
            return "transformer and VAE resident, text encoder on the CPU"
        return TIER_SUMMARY[self.tier] + ("; text encoder on the CPU" if self.text_encoder_on_cpu else "")

    def headline(self) -> str:
        """One line: tier, why, the clip's frames, and the numbers."""
        count = clip_shape(self.sizes, self.work).frames if self.sizes.is_clip else 0
        frames = f"{count} frame{'s' if count != 1 else ''}; " if self.sizes.is_clip else ""
        if not self.device.is_accelerator:
            text = (f"memory: everything on the CPU ({self.dtype}); {frames}predicted peak {_gib(self.peak_bytes)} "
                    f"of {_gib(self.budget)} usable RAM")
            return text if self.fits else text + " - does not fit: expect swapping or an out-of-memory error"
        cap = f", capped at {_gib(self.cap)}" if self.cap else ""
        text = (f"memory: {self.tier} ({self.summary()}), {self.chosen_by}; {frames}predicted peak "
                f"{_gib(self.peak_bytes)} of {_gib(self.budget)} usable{cap}")
        return text if self.fits else text + " - does not fit: out-of-memory fallbacks will step down"

    def notes(self) -> list[str]:
        notes = []
        if not self.fits:
            notes.append(self._shortfall())
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

    def _shortfall(self) -> str:
        """What the plan would need: the free memory, and the phase and activations that set the peak."""
        phase = max(PHASES, key=self.peak)
        where = f"device memory ({self.label()})" if self.device.is_accelerator else "RAM"
        text = f"needs about {_gib(self.needs())} of free {where}; the {phase} phase peaks at {_gib(self.peak(phase))}"
        if phase == "denoise":
            tokens = est.dit_tokens(self.sizes, self.work)
            text += (f", {_gib(self.activations('denoise'))} of it the DiT's activations for {tokens:,} tokens x "
                     f"{self.work.rows} rows")
        return text

    def record(self) -> dict:
        """The plan as stored in an output's metadata (`sana info` shows one row per key)."""
        record = {"tier": self.tier if self.device.is_accelerator else "cpu", "chosen": self.chosen_by,
                  "device": self.device.describe(), "dtype": self.dtype,
                  "text encoder": f"{self.where('text_encoder')} ({self.te_dtype})",
                  "transformer": self.where("transformer"), "vae": self.where("vae"),
                  "predicted peak": _gib(self.peak_bytes), "usable": _gib(self.budget)}
        if self.vae_dt != self.dtype:
            record["vae dtype"] = self.vae_dt
        if self.sizes.is_clip:
            record["clip"] = self.clip()
        if self.cap:
            record["cap"] = _gib(self.cap)
        if self.fallbacks:
            record["fallbacks"] = "; ".join(self.fallbacks)
        return record


# ---------------------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------------------

# Beside an fp16 DiT (GPUs without bf16, compute capability < 8; MPS), Gemma-2's and the autoencoders'
# activations leave fp16's range (inf, then NaN: a black image), so they run in fp32 there; an explicit --vae-dtype
# still wins, and a text encoder that no longer fits goes to the CPU as any other.
HALF_GUARD_DTYPE = "fp32"


def usable_memory(device: DeviceInfo, cap: int | None) -> int:
    """What sana may allocate: the free memory (or the cap, if lower) less the allocator's headroom."""
    limit = device.free_memory if cap is None else min(cap, device.free_memory)
    return max(0, int(limit * (1 - HEADROOM_FRACTION)) - HEADROOM_BYTES)


def plan_memory(device: DeviceInfo, sizes: ComponentSizes, work: Workload, *, mode: str = "auto",
                max_vram: int | None = None, dtype: str = "auto", vae_dtype: str | None = None) -> MemoryPlan:
    """Choose dtype, placement tier, text-encoder device and VAE tiles for `work` on `device`.

    `mode` "auto" takes the highest tier whose predicted peak fits, preferring tiers that keep VAE tiles at
    least GOOD_TILE_PX (clips: VIDEO_GOOD_TILE_PX, and temporal pieces of GOOD_PIECE_FRAMES); a tier name forces
    that tier (the text encoder and the tiles still adapt). When nothing fits, the most frugal plan comes back
    with `fits` False. `vae_dtype` runs the VAE in another dtype than the DiT (None: the same; "auto": the
    model's recommended VAE dtype where it fits, `preferred_vae_dtype`).
    """
    from ..device import DTYPE_NAMES, dtype_for

    check_mode(mode)
    if vae_dtype == "auto":
        same = plan_memory(device, sizes, work, mode=mode, max_vram=max_vram, dtype=dtype)
        preferred = preferred_vae_dtype(sizes)
        if preferred is None or preferred == same.dtype:
            return same
        wider = plan_memory(device, sizes, work, mode=mode, max_vram=max_vram, dtype=dtype, vae_dtype=preferred)
        # Only where it costs nothing but memory: the same tier, text-encoder home and decode tiles.
        def layout(plan: MemoryPlan) -> tuple:
            return plan.tier, plan.text_encoder_on_cpu, plan.decode_tile, plan.decode_frames

        return wider if wider.fits and layout(wider) == layout(same) else same
    if vae_dtype is not None and vae_dtype not in DTYPE_BYTES:
        raise UsageError(f"unknown VAE dtype '{vae_dtype}'", f"use auto, {', '.join(DTYPE_BYTES)}")
    compute = DTYPE_NAMES[dtype_for(device, dtype)]
    if compute == "fp16" and vae_dtype is None:
        vae_dtype = HALF_GUARD_DTYPE  # the autoencoders' activations leave fp16's range (module constant)
    cap = max_vram if device.is_accelerator else None
    budget = usable_memory(device, cap)
    graphs = device.kind == "cuda" and est.dit_tokens(sizes, work) <= GRAPH_MAX_TOKENS
    base = MemoryPlan(device=device, sizes=sizes, work=work, dtype=compute, tier="high", budget=budget, cap=cap,
                      cuda_graphs=graphs, chosen_by="auto" if mode == "auto" else f"--memory {mode}",
                      vae_dtype=vae_dtype if vae_dtype != compute else None)
    fit = fitting.fit_clip_decode if sizes.is_clip else fitting.fit_tile
    good, least = ((tiles.VIDEO_GOOD_TILE_PX, tiles.VIDEO_MIN_TILE_PX) if sizes.is_clip
                   else (tiles.GOOD_TILE_PX, tiles.MIN_TILE_PX))
    if not device.is_accelerator:
        plan = replace(base, chosen_by="the CPU", cuda_graphs=False)
        found = fit(plan, least)
        return found if found is not None else fitting.smallest_decode(plan)

    candidates = LADDER if mode == "auto" else ((mode, False), (mode, True))
    for tier, on_cpu in candidates:
        found = fit(base._variant(tier, on_cpu, None), good)
        if found is not None:
            return found
    fitting_plans = [fit(base._variant(tier, on_cpu, None), least) for tier, on_cpu in candidates]
    fitting_plans = [p for p in fitting_plans if p is not None]
    if fitting_plans and sizes.is_clip:
        # Offloading moves each component once a clip (blocks stream behind seconds-long steps), while small
        # tiles and short pieces decode their overlaps again: the least overlap wins, the higher tier on a tie.
        return min(fitting_plans, key=lambda p: round(fitting.decode_cost(p), 3))
    if fitting_plans:
        return fitting_plans[0]
    # Nothing fits: the most frugal candidate, smallest tiles; out-of-memory fallbacks take it from there.
    tier, on_cpu = candidates[-1]
    return fitting.smallest_decode(base._variant(tier, on_cpu, None))


def preferred_vae_dtype(sizes: ComponentSizes) -> str | None:
    """The VAE dtype a model's own recipe asks for, when it is not the DiT's: SANA-Video's (diffusers' documented
    use keeps the Wan 2.1 / LTX-2 VAE in fp32 beside a bf16 transformer). None: the compute dtype."""
    return "fp32" if sizes.dit_kind == "video" else None


def resident_plan(device: DeviceInfo, sizes: ComponentSizes, work: Workload, dtype: str, *,
                  cuda_graphs: bool, vae_dtype: str | None = None) -> MemoryPlan:
    """The modules stay where the caller put them, whole-image decode, tiles only after an out-of-memory error:
    the pipeline's behaviour when no plan is given."""
    return MemoryPlan(device=device, sizes=sizes, work=work, dtype=dtype, tier="high", decode_tile=None,
                      cuda_graphs=cuda_graphs and device.kind == "cuda", budget=usable_memory(device, None),
                      chosen_by="default", fixed_placement=True, vae_dtype=vae_dtype)


def _cpu_text_dtype(plan: MemoryPlan) -> str:
    """fp32 on the CPU when the RAM holds it (half-precision matmuls are slow on most CPUs), else bf16."""
    need_fp32 = plan.sizes.text_encoder_params * 4
    others = plan._bytes("transformer") + plan._bytes("vae")
    return "fp32" if need_fp32 + others <= plan.device.ram_available * 0.8 else "bf16"


def _pinned(plan: MemoryPlan) -> frozenset[str]:
    """Components whose host copies are page-locked: in order of how often they move, within the RAM share."""
    if plan.device.kind != "cuda":
        return frozenset()
    allowance = plan.device.ram_available * PIN_RAM_FRACTION
    pinned = []
    for component in ("transformer", "vae", "text_encoder"):
        size = plan._bytes(component)
        if plan.home(component) in ("host", "streamed") and size <= allowance:
            pinned.append(component)
            allowance -= size
    return frozenset(pinned)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.1f} GiB"


def _count(params: int) -> str:
    if params >= 1e9:
        return f"{params / 1e9:.2f}B"
    return f"{params / 1e6:.0f}M" if params >= 1e6 else f"{params / 1e3:.1f}k"
