"""Kernel tests: Triton's CPU interpreter when there is no CUDA GPU, NaN-filled `torch.empty` everywhere.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, at import, before any test module
imports `sana.kernels`. Nothing else in the suite imports Triton, so the setting leaves other tests alone.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"



@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Fill every float `torch.empty` with NaN, so an output element the kernel never writes fails the test."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", poisoned)
    yield
