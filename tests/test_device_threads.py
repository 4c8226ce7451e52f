"""CPU threads: what the user says wins; otherwise the idle cores, never fewer than one."""

from __future__ import annotations

import os

import pytest

from sana.device import cpu_threads


@pytest.fixture
def machine(monkeypatch):
    """Four usable CPUs and a settable load; no thread variables from the environment."""
    monkeypatch.delenv("SANA_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)

    def set_load(load: float) -> None:
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_load


def test_idle_cores_are_used(machine):
    machine(0.0)
    assert cpu_threads() == 4
    machine(1.2)  # this process alone
    assert cpu_threads() == 4
    machine(3.0)  # two other busy processes
    assert cpu_threads() == 2
    machine(9.0)
    assert cpu_threads() == 1


def test_what_the_user_says_wins(machine, monkeypatch):
    machine(9.0)
    assert cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads() == 2
    monkeypatch.setenv("SANA_THREADS", "4")
    assert cpu_threads() == 4


def test_the_cuda_context_starts_on_a_thread_only_where_a_gpu_may_be_chosen(monkeypatch):
    import torch

    from sana.device import start_cuda_context

    assert start_cuda_context("cpu") is None and start_cuda_context("mps") is None
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert start_cuda_context("auto") is None  # a torchrun process picks its GPU by rank
    monkeypatch.delenv("LOCAL_RANK")
    thread = start_cuda_context("auto")
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
    if torch.cuda.is_available():  # the context is there for the first probe
        assert torch.cuda.is_initialized()


# MKL's vector math caches its CPU type in a global that its first call writes twice (the raw CPUID code, then the
# code it dispatches on); a thread reading it in between runs the low-accuracy kernels. The probe finds that global
# from the first instruction of `mkl_vml_serv_cpu_detect` (`mov disp32(%rip), %eax`), in a fresh process.
_MKL_CPU_TYPE_PROBE = """
import ctypes, os, sys
import torch
try:
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    detect = ctypes.cast(lib.mkl_vml_serv_cpu_detect, ctypes.c_void_p).value
except (OSError, AttributeError):
    sys.exit(3)  # no MKL in this build: nothing to settle
code = ctypes.string_at(detect, 6)
if code[:2] != b"\\x8b\\x05":
    sys.exit(3)  # another MKL: the global cannot be found this way
cpu_type = ctypes.c_int.from_address(detect + 6 + int.from_bytes(code[2:6], "little", signed=True))
if cpu_type.value != -1:
    sys.exit(4)  # chosen while torch imported: no race left to prevent
from sana.device import pick_device
pick_device("cpu")
print(cpu_type.value, lib.mkl_vml_serv_cpu_detect())
"""


def test_picking_a_device_settles_mkls_kernel_choice_before_threads_share_an_op():
    """The first vector-math op of a process split across threads once ran part of the text encoder's RoPE
    cosines at ~12 bits now and then (caption embeddings 6e-4 off); `pick_device` makes that first call itself, on
    one element, so the choice is made before any op is shared out."""
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), SANA_THREADS="2")
    run = subprocess.run([sys.executable, "-c", _MKL_CPU_TYPE_PROBE], capture_output=True, text=True, env=env,
                         timeout=300)
    if run.returncode in (3, 4):
        pytest.skip("this PyTorch has no MKL vector math of the probed shape, or chooses on import")
    assert run.returncode == 0, run.stderr
    after, settled = (int(v) for v in run.stdout.split())
    assert after == settled  # chosen by pick_device, with the code MKL dispatches on
