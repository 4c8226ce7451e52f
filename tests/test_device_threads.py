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
