"""What every pipeline shares: events to whoever drives it, the out-of-memory recovery around each phase, and
turning decoded pixels into 8-bit ones.

A pipeline holds one `Placement` (sana.placement) of its modules. Each phase runs inside `placement.phase(...)`;
an out-of-memory error in a phase retries it under the plan's next lower step (smaller VAE tiles, then the next
placement tier) with one notice. Nothing here prints.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SanaError
from ..trace import mark, span


@dataclass
class Events:
    """Callbacks from the engine to whoever drives it."""

    on_phase: Callable[[str], None] | None = None  # "encode" | "encode image" | "denoise" | "decode"
    on_step: Callable[[int, int], None] | None = None  # (step done, total)
    on_notice: Callable[[str], None] | None = None  # one-line notices (e.g. a fallback the engine took)
    # (index, image, {"timings", "memory"} so far) as each image of a batch is decoded, so a front end can save it
    # before the next one is made
    on_output: Callable[[int, object, dict], None] | None = None

    def phase(self, name: str) -> float:
        """Announce a phase; returns its start time."""
        mark(f"phase {name}")
        if self.on_phase:
            self.on_phase(name)
        return time.perf_counter()

    def notice(self, text: str) -> None:
        if self.on_notice:
            self.on_notice(text)

    def output(self, index: int, item: object, details: Callable[[], dict]) -> None:
        if self.on_output:
            self.on_output(index, item, details())


def load_together(loaders: dict[str, Callable[[], object]],
                  when_ready: dict[str, Callable[[object], None]] | None = None) -> dict[str, object]:
    """Run each component's loader at the same time, one thread each, and return what they made by name.

    A load is file reads, host-to-device copies and casts, which release the GIL: side by side, the components'
    reads and copies overlap instead of queueing. `when_ready[name](component)` runs in the calling thread as soon
    as that component is loaded, while the others still load (work there keeps the calling thread's CUDA library
    handles, which are per thread, for later). Every loader runs to its end; then the first failure in the order
    given is raised, so errors do not depend on timing."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def traced(name: str, load: Callable[[], object]) -> Callable[[], object]:
        def run():
            with span(f"load {name}"):
                return load()
        return run

    when_ready = when_ready or {}
    with ThreadPoolExecutor(max_workers=len(loaders), thread_name_prefix="sana-load") as pool:
        futures = {pool.submit(traced(name, load)): name for name, load in loaders.items()}
        pending, failed = set(futures), False
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is not None:
                    failed = True
                elif not failed and futures[future] in when_ready:
                    with span(f"warm {futures[future]}"):
                        when_ready[futures[future]](future.result())
    by_name = {name: future for future, name in futures.items()}
    for future in by_name.values():
        if future.exception() is not None:
            raise future.exception()
    return {name: future.result() for name, future in by_name.items()}


class DecoderThread:
    """One thread that runs a pipeline's VAE decodes, its warm-up included.

    PyTorch keeps cuDNN's execution plans in a cache of each thread (plans are not thread-safe across engines), and
    a decoder's first run at a new size spends most of its time building them (1.3-1.9 s for DC-AE at 1024 px on an
    H100, against ~0.05 s a decode after). Run in the main thread, that warm-up holds up everything after the
    load; here it runs while the main thread warms the text encoder and encodes, and every later decode, from
    whichever thread asks, finds the plans made."""

    def __init__(self, device: torch.device):
        from concurrent.futures import ThreadPoolExecutor

        self.device = torch.device(device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sana-decode")
        self._warm = None  # the warm-up's future, until it has been waited for

    def _call(self, fn: Callable[[], object]):
        def run():
            # grad mode and the current device are per thread
            with torch.no_grad(), (torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()):
                return fn()
        return run

    def warm(self, fn: Callable[[], object]) -> None:
        """Start `fn` (a decode at the first image's shapes) on the thread; returns at once."""
        def traced():
            with span("decoder warm-up"):
                return fn()
        self._warm = self._pool.submit(self._call(traced))

    def warming(self) -> bool:
        """Whether the warm-up is still running."""
        return self._warm is not None and not self._warm.done()

    def wait_warm(self) -> None:
        """Wait for the warm-up (its errors are only a lost head start: the decode itself reports them). Done
        before anything is captured in a CUDA graph: the warm-up's allocations must not meet a capture."""
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.exception()

    def run(self, fn: Callable[[], object]):
        """`fn()` on the thread; its result, or its exception raised here."""
        return self._pool.submit(self._call(fn)).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class PlacedPipeline:
    """Base of the pipelines: `self.placement` carries out the memory plan; `_recovering` runs a phase in it."""

    placement = None  # sana.placement.Placement, set by the subclass
    device: torch.device
    denoiser = None  # the DiT step (the module, or its captured CUDA graph)

    @property
    def plan(self):
        """The memory plan in force (lowered by out-of-memory fallbacks)."""
        return self.placement.plan

    def _recovering(self, phase: str, run: Callable, events: Events | None, failure: SanaError):
        """`run()` inside the plan's `phase`; after an out-of-memory error, again under the plan's next lower
        step (with one notice), until it succeeds or nothing lower exists (`failure` is raised then)."""
        while True:
            try:
                with self.placement.phase(phase):
                    return run()
            except torch.OutOfMemoryError:
                pass  # handled below, once the traceback (and the failed attempt's tensors) is gone
            lower = self.plan.lower(phase)
            self._release_cached_memory()
            if lower is None:
                raise failure from None
            self.placement.replan(lower)
            self._follow_placement()
            if events is not None:
                events.notice(fallback_notice(phase, lower))

    def _follow_placement(self) -> None:
        """Take the placement's DiT step and text encoder runner (after it is made, and after each replan)."""
        self.denoiser = self.placement.denoiser
        text_encoder = getattr(self, "text_encoder", None)
        if text_encoder is not None and hasattr(text_encoder, "runner"):
            text_encoder.runner = self.placement.text_runner

    def _start_peak_measure(self) -> None:
        """Count the device's peak memory from here (a generation's own, not the load's or an earlier run's)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _memory_record(self) -> dict:
        """The plan in force as metadata records it, with the peak the CUDA allocator reached in this run."""
        record = self.plan.record()
        if self.device.type == "cuda":
            record["measured peak"] = f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB allocated, " \
                                      f"{torch.cuda.max_memory_reserved(self.device) / 2**30:.2f} GiB reserved"
        return record

    def _release_cached_memory(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _elapsed(self, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def fallback_notice(phase: str, plan) -> str:
    doing = {"encode": "encoding the prompt", "condition": "encoding the first frame", "denoise": "denoising",
             "decode": "decoding"}[phase]
    if plan.fallbacks and plan.fallbacks[-1].endswith("px tiles"):
        return f"out of GPU memory while {doing}; decoding in {plan.decode_tile} px tiles from now on"
    return f"out of GPU memory while {doing}; continuing with {plan.summary()} ({plan.label()})"


# -- pixels -------------------------------------------------------------------------------------------------

def check_finite(pixels: torch.Tensor, what: str) -> None:
    """Refuse a decoded `what` ("image", "clip") with NaN or infinite values: a black file would hide it."""
    if not torch.isfinite(pixels).all():
        hint = "fp16 overflow is the usual cause: try --dtype bf16 or fp32" if pixels.dtype == torch.float16 \
            else "the weights or the settings give non-finite values; try --dtype fp32"
        raise SanaError(f"the decoded {what} has NaN or infinite values", hint)


def resize_and_crop(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, height, width]: scaled (bilinear) until it covers the target, then centre-cropped.
    diffusers' `resize_and_crop_tensor` arithmetic (images and, frame by frame, videos)."""
    orig_h, orig_w = pixels.shape[-2:]
    if (orig_h, orig_w) == (height, width):
        return pixels
    ratio = max(height / orig_h, width / orig_w)
    resized_w, resized_h = int(orig_w * ratio), int(orig_h * ratio)
    pixels = F.interpolate(pixels, size=(resized_h, resized_w), mode="bilinear", align_corners=False)
    top, left = (resized_h - height) // 2, (resized_w - width) // 2
    return pixels[:, :, top : top + height, left : left + width]


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] with diffusers' `postprocess` arithmetic (denormalise in
    the pixels' dtype, then round(255 x) in fp32), done where the pixels are, so only uint8 reaches the host."""
    unit = (pixels * 0.5 + 0.5).clamp(0, 1)
    return (unit.float() * 255).round().to(torch.uint8).movedim(-3, -1).contiguous()
