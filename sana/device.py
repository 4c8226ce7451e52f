"""Choosing the device and the compute dtype, and describing the device for the memory planner.

`probe_device` reads what the planner needs (memory, compute capability, host RAM) into a plain
`DeviceInfo`; the planner only ever sees that dataclass, so tests can describe devices they do not have.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

from .errors import UsageError
from .units import GiB

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class DeviceInfo:
    """What the memory planner knows about the device a run uses. Memory in bytes.

    For "cuda" and "mps", `total_memory` / `free_memory` are the accelerator's; for "cpu" they are the host RAM.
    """

    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    total_memory: int
    free_memory: int
    ram_total: int
    ram_available: int
    compute_capability: tuple[int, int] | None = None  # CUDA only
    kernels: bool = False  # our Triton kernels will run (CUDA with Triton): the DiT then needs half the activations
    index: int = 0

    @property
    def is_accelerator(self) -> bool:
        return self.kind != "cpu"

    def describe(self) -> str:
        """One line, e.g. "NVIDIA H100 80GB HBM3 (cc 9.0, 79.2 GiB, 78.7 GiB free)"."""
        cc = f"cc {self.compute_capability[0]}.{self.compute_capability[1]}, " if self.compute_capability else ""
        if self.kind == "cpu":
            return f"{self.name} ({self.ram_total / GiB:.1f} GiB RAM, {self.ram_available / GiB:.1f} GiB available)"
        return f"{self.name} ({cc}{self.total_memory / GiB:.1f} GiB, {self.free_memory / GiB:.1f} GiB free)"


def cpu_threads(requested: int | None = None) -> int:
    """Threads for work on the CPU: `requested` (--threads / SANA_THREADS), else OMP_NUM_THREADS, else the CPUs
    this process may use less those other processes keep busy (the one-minute load average), at least one: on a
    busy machine more threads than idle cores fight over them and run slower than fewer."""
    import os

    for value in (requested, os.environ.get("SANA_THREADS"), os.environ.get("OMP_NUM_THREADS")):
        if value:
            return max(1, int(value))
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(usable, usable - busy + 1))  # + 1: this process's own share of the load is not "other"


def pick_device(name: str = "auto") -> torch.device:
    device = _pick_device(name)
    settle_cpu_math()  # CPU ops run beside any device (prompts, schedules, a CPU-homed text encoder)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return device


def settle_cpu_math() -> None:
    """Have MKL's vector math (behind `cos`, `exp`, `tanh`, ... of CPU tensors) choose its kernels now, from this
    one thread, before any op splits across threads.

    Its first call detects the CPU and caches the answer in a global written twice: the raw CPUID code, then the
    code it dispatches on. A thread that reads it between the two writes indexes the kernel table with the raw code,
    which lands on the low-accuracy kernels (VML_EP, ~12 bits): when the first such op of a process is split across
    OpenMP threads, now and then one thread's share is off by ~1e-4 (the text encoder's RoPE cosines were, and
    with them the cached caption embeddings). One element settles it; builds without MKL lose nothing."""
    torch.cos(torch.zeros(1))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but no CUDA GPU is available", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available", "use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device '{name}'", "use auto, cuda, cuda:N, mps or cpu")
    return torch.device(name)


def dtype_for(info: DeviceInfo, name: str = "auto") -> torch.dtype:
    """bf16 on GPUs of compute capability >= 8, fp16 below (and on MPS), fp32 on the CPU; an explicit name wins."""
    if name != "auto":
        if name not in DTYPES:
            raise UsageError(f"unknown dtype '{name}'", "use auto, bf16, fp16 or fp32")
        return DTYPES[name]
    if info.kind == "cuda":
        major = info.compute_capability[0] if info.compute_capability else 8
        return torch.bfloat16 if major >= 8 else torch.float16
    if info.kind == "mps":
        return torch.float16
    return torch.float32


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`dtype_for` on the device itself."""
    return dtype_for(probe_device(device), name)


def start_cuda_context(name: str = "auto") -> threading.Thread | None:
    """Create the CUDA context of the GPU that `pick_device(name)` will choose on a thread of its own, so that it
    overlaps the imports and planning that follow (the first `probe_device` then finds it made). None where no
    CUDA device can be in play: a CPU or MPS choice, or a torchrun process (which picks its GPU by rank)."""
    if not (name == "auto" or name.startswith("cuda")) or "LOCAL_RANK" in os.environ:
        return None
    index = int(name.split(":", 1)[1]) if name.startswith("cuda:") and name.split(":", 1)[1].isdigit() else None

    def create() -> None:
        from .trace import span

        try:  # the driver's start-up (is_available) too, not only the context
            with span("cuda context"):
                if torch.cuda.is_available():
                    torch.cuda.mem_get_info(torch.cuda.current_device() if index is None else index)
        except Exception:  # noqa: BLE001 - the main thread meets the same error in `probe_device` and reports it
            pass

    thread = threading.Thread(target=create, name="cuda-context", daemon=True)
    thread.start()
    return thread


def probe_device(device: torch.device | str) -> DeviceInfo:
    """Memory, compute capability and host RAM of `device`, read now (free memory changes as others allocate)."""
    device = torch.device(device)
    ram_total, ram_available = host_memory()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return DeviceInfo(kind="cuda", name=torch.cuda.get_device_name(index), total_memory=total, free_memory=free,
                          ram_total=ram_total, ram_available=ram_available,
                          compute_capability=tuple(torch.cuda.get_device_capability(index)),
                          kernels=_kernels_will_run(), index=index)
    if device.type == "mps":
        # Unified memory: the MPS allocator's working-set limit is what a process may hold on the GPU.
        limit = int(torch.mps.recommended_max_memory())
        used = int(torch.mps.driver_allocated_memory())
        return DeviceInfo(kind="mps", name="Apple GPU (MPS)", total_memory=limit, free_memory=max(0, limit - used),
                          ram_total=ram_total, ram_available=ram_available)
    # The threads this process computes with (`pick_device` set them), which the record's device line reports.
    return DeviceInfo(kind="cpu", name=f"CPU ({torch.get_num_threads()} threads)", total_memory=ram_total,
                      free_memory=ram_available, ram_total=ram_total, ram_available=ram_available)


def host_memory() -> tuple[int, int]:
    """(total, available) host RAM in bytes."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)
    except ImportError:
        pass
    try:  # Linux without psutil
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages // 2  # unknown availability: assume half is free


def limit_process_memory(device: torch.device, cap: int) -> None:
    """Make the CUDA caching allocator refuse to hold more than `cap` bytes on `device` (a shared card)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)


def _kernels_will_run() -> bool:
    from . import ops

    if not ops.kernels_enabled():
        return False
    try:
        from . import kernels
    except ImportError:
        return False
    return bool(kernels.triton_available())
