"""Carrying out a `MemoryPlan` (sana.memory): where each component's weights are, phase by phase.

Every component gets a *home* chosen by the plan, and the pipeline only says which phase runs next
(`Placement.phase("denoise")`); nothing else in the engine knows about offloading.

    Resident         weights stay on the compute device
    Offloaded        weights live in one host buffer (page-locked when the plan pins it) and visit the device
                     in a few large copies while their phase runs; leaving drops the device copy (weights
                     never change, so nothing is copied back)
    StreamedBlocks   the DiT's non-block weights visit like `Offloaded`; each block is copied into one of two
                     device slots on a side CUDA stream while the previous block computes
    OnCpu            the text encoder runs on the CPU; its embeddings go to the device

The VAE is any module: our DC-AE decoder, or diffusers' video autoencoder (Wan 2.1, LTX-2), which is offloaded
whole like the DC-AE (its encoder turns the first frame of image-to-video and the world model into latents in
the "condition" phase). How a video VAE tiles is `video_decode_tiling`'s answer, applied with diffusers' own
`enable_tiling` and framewise options.

Host buffers are packed per component (per block for streaming) so that a move is a few large copies, and are
page-locked in place with cudaHostRegister: PyTorch's pinned allocator rounds every allocation up to a power of
two, which would pin up to twice the weights' size. Pinned copies run at 54 GB/s on the H100 host, pageable ones
at 6.6 GB/s.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from .device import DTYPES
from .memory import COMPONENTS, MemoryPlan, Workload, clip_shape, tile_geometry, video_tile_geometry
from .models.dcae import Tiling

ALIGN = 256  # bytes; every tensor starts aligned in the packed buffers, as cudaMalloc would align it
# Device copies are allocated in pieces of about this size (a larger tensor is one piece): one 5 GB block would
# need that much contiguous room in the caching allocator, which fragmentation under a cap may not leave
# (measured: a 4.9 GB text-encoder upload failed under a 12 GiB cap with 8.3 GiB allocated).
CHUNK_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------------------
# Packed weights
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class FlatWeights:
    """The parameters and buffers of a module (minus `skip` submodules) packed into one host buffer.

    `bind(buffer)` points every tensor of the module at its view of `buffer` (the host buffer, or a device
    buffer of the same layout), so moving the module is copying one buffer and rebinding.
    """

    def __init__(self, module: nn.Module, *, skip: tuple[nn.Module, ...] = (), pin: bool = False):
        skipped = {id(m) for s in skip for m in s.modules()}
        params: dict[int, nn.Parameter] = {}
        buffers: dict[int, tuple[torch.Tensor, list[tuple[nn.Module, str]]]] = {}  # tensor and its owners
        for sub in module.modules():
            if id(sub) in skipped:
                continue
            for p in sub._parameters.values():
                if p is not None:
                    params.setdefault(id(p), p)
            for name, b in sub._buffers.items():
                if b is not None:
                    buffers.setdefault(id(b), (b, []))[1].append((sub, name))
        self._params = list(params.values())
        self._buffer_owners = [owners for _, owners in buffers.values()]
        tensors = [p.data for p in self._params] + [b for b, _ in buffers.values()]
        self.entries: list[_Entry] = []
        offset = 0
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            self.entries.append(_Entry(offset, nbytes, t.dtype, tuple(t.shape)))
            offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        self.host = torch.empty(self.nbytes, dtype=torch.uint8)
        for entry, t in zip(self.entries, tensors):
            self._view(self.host, entry).copy_(t)
        self.bind(self.host)
        self.pinned = pin and _page_lock(self, self.host)

    @property
    def layout(self) -> tuple[_Entry, ...]:
        return tuple(self.entries)

    @staticmethod
    def _view(buffer: torch.Tensor, entry: _Entry) -> torch.Tensor:
        return buffer[entry.offset : entry.offset + entry.nbytes].view(entry.dtype).view(entry.shape)

    def bind(self, buffer: torch.Tensor) -> None:
        """Point the module's tensors at their views of `buffer` (same layout as the host buffer)."""
        for index, entry in enumerate(self.entries):
            self._bind_one(index, self._view(buffer, entry))

    def upload(self, device: torch.device) -> list[torch.Tensor]:
        """A device copy in CHUNK_BYTES pieces, bound; asynchronous on the current stream when page-locked."""
        pieces = []
        for first, last in self._chunks():
            start, end = self.entries[first].offset, self.entries[last - 1].offset + self.entries[last - 1].nbytes
            piece = torch.empty(end - start, dtype=torch.uint8, device=device)
            piece.copy_(self.host[start:end], non_blocking=self.pinned)
            for index in range(first, last):
                entry = self.entries[index]
                self._bind_one(index, self._view(piece, replace(entry, offset=entry.offset - start)))
            pieces.append(piece)
        return pieces

    def _chunks(self) -> list[tuple[int, int]]:
        """[first, last) entry ranges of at most CHUNK_BYTES each (or one entry)."""
        chunks, first = [], 0
        for index, entry in enumerate(self.entries):
            if index > first and entry.offset + entry.nbytes - self.entries[first].offset > CHUNK_BYTES:
                chunks.append((first, index))
                first = index
        if self.entries:
            chunks.append((first, len(self.entries)))
        return chunks

    def _bind_one(self, index: int, view: torch.Tensor) -> None:
        if index < len(self._params):
            self._params[index].data = view
        else:
            for module, name in self._buffer_owners[index - len(self._params)]:
                module._buffers[name] = view


def _page_lock(owner: object, buffer: torch.Tensor) -> bool:
    """Page-lock `buffer` in place for as long as `owner` lives; False where CUDA cannot."""
    if not torch.cuda.is_available():
        return False
    try:
        cudart = torch.cuda.cudart()
        if int(cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)) != 0:
            return False
    except (AttributeError, RuntimeError):
        return False
    # Unlock before the memory can go back to the OS: `owner` holds the buffer, so the buffer outlives this.
    finalizer = weakref.finalize(owner, cudart.cudaHostUnregister, buffer.data_ptr())
    finalizer.atexit = False  # the driver may already be gone at exit, and the OS unlocks anyway
    return True


# ---------------------------------------------------------------------------------------------------------
# Homes
# ---------------------------------------------------------------------------------------------------------

class Resident:
    """Weights on the compute device for good (put there by the loader or the caller; never moved here)."""

    def to_device(self) -> None:
        pass

    def to_host(self) -> None:
        pass

    def release(self) -> None:
        pass


class OnCpu(Resident):
    """A module that runs on the CPU (the text encoder when the GPU cannot hold it); never moved after that."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        module.to("cpu", dtype)


class Offloaded:
    """Weights in host memory, on the device only between `to_device` and `to_host`."""

    def __init__(self, module: nn.Module, device: torch.device, *, pin: bool, skip: tuple[nn.Module, ...] = ()):
        self.device = device
        self.flat = FlatWeights(module, skip=skip, pin=pin and device.type == "cuda")
        self._device_copy: list[torch.Tensor] | None = None

    def to_device(self) -> None:
        if self._device_copy is None:
            self._device_copy = self.flat.upload(self.device)

    def to_host(self) -> None:
        if self._device_copy is not None:
            self.flat.bind(self.flat.host)
            self._device_copy = None

    def release(self) -> None:
        self.to_host()


def blocks_of(transformer: nn.Module) -> nn.ModuleList:
    """The DiT's repeated blocks: ours (`blocks`; image, video and world DiTs) or diffusers' (`transformer_blocks`)."""
    blocks = getattr(transformer, "blocks", None)
    if blocks is None:
        blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"{type(transformer).__name__} has no `blocks` to stream")
    return blocks


class StreamedBlocks:
    """The DiT with its blocks in host memory, streamed through two device slots during each forward.

    Before block i runs, its weights must be in a slot; the next block's copy is then started on a side stream
    (after the block that last used that slot has finished), so transfers overlap the computation. After the
    last block, block 0 is prefetched for the next step. CUDA graphs cannot be used: the weights move.
    """

    def __init__(self, transformer: nn.Module, device: torch.device, *, pin: bool):
        self.device = device
        self.blocks = blocks_of(transformer)
        pin = pin and device.type == "cuda"
        self.rest = Offloaded(transformer, device, pin=pin, skip=(self.blocks,))
        self.flats = [FlatWeights(block, pin=pin) for block in self.blocks]
        # Blocks may differ (the world model's softmax blocks lack the GDN short convolutions): a slot holds the
        # largest, and each block binds its own layout at the slot's start.
        self.slot_bytes = max((f.nbytes for f in self.flats), default=0)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._slots: list[torch.Tensor] | None = None
        self._hooks: list = []

    def to_device(self) -> None:
        if self._slots is not None:
            return
        self.rest.to_device()
        self._slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)]
        self._held: list[int | None] = [None, None]  # block index in each slot
        self._ready = [torch.cuda.Event() for _ in range(2)] if self.stream else None  # copy into slot finished
        self._done = [torch.cuda.Event() for _ in range(2)] if self.stream else None  # block in slot finished
        self._running, self._last = 0, 1
        for index, block in enumerate(self.blocks):
            self._hooks.append(block.register_forward_pre_hook(partial(self._before, index)))
            self._hooks.append(block.register_forward_hook(partial(self._after, index)))

    def to_host(self) -> None:
        if self._slots is None:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.stream is not None:  # an in-flight prefetch still writes a slot: let it land before freeing
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for flat in self.flats:
            flat.bind(flat.host)
        self.rest.to_host()
        self._slots = None

    def release(self) -> None:
        self.to_host()

    def _load(self, index: int, slot: int) -> None:
        source = self.flats[index].host
        target = self._slots[slot][: source.numel()]
        if self.stream is None:
            target.copy_(source)
        else:
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(self._done[slot])  # the slot's previous block has finished reading it
                target.copy_(source, non_blocking=self.flats[index].pinned)
                self._ready[slot].record(self.stream)
        self._held[slot] = index

    def _before(self, index: int, module, args) -> None:
        slot = self._held.index(index) if index in self._held else self._last ^ 1
        if self._held[slot] != index:
            self._load(index, slot)
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready[slot])
        self.flats[index].bind(self._slots[slot])
        self._running = slot
        following = (index + 1) % len(self.blocks)
        if following != index and self._held[slot ^ 1] != following:
            self._load(following, slot ^ 1)

    def _after(self, index: int, module, args, output) -> None:
        if self.stream is not None:
            self._done[self._running].record(torch.cuda.current_stream(self.device))
        self.flats[index].bind(self.flats[index].host)
        self._last = self._running


# ---------------------------------------------------------------------------------------------------------
# The placement
# ---------------------------------------------------------------------------------------------------------

class Placement:
    """A plan applied to one pipeline's modules: `phase(name)` brings in what the phase needs."""

    def __init__(self, plan: MemoryPlan, *, transformer: nn.Module, text_model: nn.Module | None, vae,
                 device: torch.device | str):
        self.device = torch.device(device)
        self.transformer = transformer
        # `vae` is the DC-AE decoder (generating needs no encoder). `text_model` is None for text encoders that are
        # not modules (cached embeddings), which then stay as they are.
        self.modules = {"text_encoder": text_model, "transformer": transformer, "vae": vae}
        self.plan = plan
        self._homes = {c: self._home(c, plan) for c in COMPONENTS}
        self._graphed = None
        self._graphed_text = None
        self.denoiser = self._denoiser()
        self.text_runner = self._text_runner()

    def _home(self, component: str, plan: MemoryPlan):
        module = self.modules[component]
        where = plan.home(component)
        if where == "device" or module is None:
            return Resident()
        if where == "cpu":
            return OnCpu(module, DTYPES[plan.te_dtype])
        if where == "streamed":
            return StreamedBlocks(module, self.device, pin=component in plan.pinned)
        return Offloaded(module, self.device, pin=component in plan.pinned)

    def _denoiser(self):
        """The DiT step: replayed from a CUDA graph when the plan allows (resident weights), else the module."""
        if self.plan.cuda_graphs and self.device.type == "cuda" and self.plan.home("transformer") == "device":
            if self._graphed is None:
                from .graphs import GraphedForward

                self._graphed = GraphedForward(self.transformer)
            return self._graphed
        if self._graphed is not None:  # captured graphs point at weights that may now move; drop their pool
            self._graphed.reset()
            self._graphed = None
        return self.transformer

    def _text_runner(self):
        """The text encoder's forward replayed from CUDA graphs (`GraphedEncoder`) when the plan allows, else None
        (the module runs as it is)."""
        model = self.modules["text_encoder"]
        if self.plan.text_encoder_graphs and self.device.type == "cuda" and hasattr(model, "run_layers"):
            if self._graphed_text is None:
                from .graphs import GraphedEncoder

                self._graphed_text = GraphedEncoder(model)
            return self._graphed_text
        if self._graphed_text is not None:  # its graphs read weights that may now move; drop their pool
            self._graphed_text.reset()
            self._graphed_text = None
        return None

    @contextmanager
    def phase(self, name: str):
        """Move out what `name` does not keep on the device, then bring in what it needs."""
        held = self.plan.on_device(name)
        for component in COMPONENTS:
            if component not in held:
                self._homes[component].to_host()
        for component in COMPONENTS:
            if component in held:
                self._homes[component].to_device()
        yield

    def replan(self, plan: MemoryPlan) -> None:
        """Switch to `plan` (a step down after an out-of-memory error); rebuilds the homes that change."""
        for component in COMPONENTS:
            old, new = self.plan, plan
            same = (old.home(component) == new.home(component)
                    and (component in old.pinned) == (component in new.pinned)
                    and (component != "text_encoder" or old.te_dtype == new.te_dtype))
            if not same:
                self._homes[component].release()
                self._homes[component] = self._home(component, plan)
        self.plan = plan
        self.denoiser = self._denoiser()
        self.text_runner = self._text_runner()


def decode_tiling(plan: MemoryPlan, height: int, width: int) -> Tiling | None:
    """The DC-AE tiles for decoding an image of height x width px under `plan` (None: in one piece). A plan with
    tiles gets tiles even when the image fits one (that tile is then the whole image)."""
    if plan.decode_tile is None:
        return None
    scale = plan.sizes.vae_scale_factor
    geometry = tile_geometry(Workload(width, height), scale, plan.decode_tile)
    if geometry is None:  # the image fits one tile
        geometry = ((height // scale,) * 2, (width // scale,) * 2)
    (tile_h, stride_h), (tile_w, stride_w) = geometry
    return Tiling(tile_h, tile_w, stride_h, stride_w)


@dataclass(frozen=True)
class VideoTiling:
    """How a diffusers video VAE (`AutoencoderKLWan`, `AutoencoderKLLTX2Video`) decodes under a plan.

    `kwargs` are exactly keyword arguments of that class's `enable_tiling` (pixels and pixel frames); `spatial`
    says whether its spatial tiles are on (`use_tiling`), `framewise` whether LTX-2 decodes in temporal pieces
    (`use_framewise_decoding`, which `enable_tiling` does not set).
    """

    kwargs: dict[str, int]
    spatial: bool
    framewise: bool

    def apply(self, vae) -> None:
        """Set `vae` (a diffusers video autoencoder) to decode this way; idempotent, so a new plan re-applies."""
        vae.enable_tiling(**self.kwargs)
        vae.use_tiling = self.spatial
        if hasattr(vae, "use_framewise_decoding"):
            vae.use_framewise_decoding = self.framewise


def video_decode_tiling(plan: MemoryPlan, height: int | None = None, width: int | None = None) -> VideoTiling:
    """The Wan / LTX-2 tiles of a clip plan at height x width px (default: the plan's workload).

    Spatial tiles follow `video_tile_geometry` (diffusers starts a tile at every stride and blends over
    tile - stride px); LTX-2's temporal pieces are `decode_frames` frames with a stride one latent frame shorter.
    Without tiles the tile is the whole frame (`spatial` False), so applying it also turns earlier tiles off.
    """
    sizes = plan.sizes
    if not sizes.is_clip:
        raise ValueError("video_decode_tiling needs a video or world-model plan; images use decode_tiling")
    work = plan.work if height is None else replace(plan.work, height=height, width=width)
    scale = sizes.vae_scale_factor
    geometry = video_tile_geometry(work, scale, plan.decode_tile)
    if geometry is None:
        geometry = ((work.height // scale,) * 2, (work.width // scale,) * 2)
    (tile_h, stride_h), (tile_w, stride_w) = geometry
    kwargs = {"tile_sample_min_height": tile_h * scale, "tile_sample_min_width": tile_w * scale,
              "tile_sample_stride_height": stride_h * scale, "tile_sample_stride_width": stride_w * scale}
    spatial = (tile_h, tile_w) != (work.height // scale, work.width // scale)
    framewise = False
    if sizes.vae_kind == "ltx2" and plan.decode_frames is not None:
        framewise = plan.decode_frames + 1 < clip_shape(sizes, work).frames
        kwargs["tile_sample_min_num_frames"] = plan.decode_frames
        kwargs["tile_sample_stride_num_frames"] = plan.decode_frames - sizes.vae_temporal_scale
    return VideoTiling(kwargs, spatial, framewise)
