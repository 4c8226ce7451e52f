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
