"""Weights the trainer writes get the permissions of any file the process writes (the umask's), not safetensors'
private 0600: a server or ComfyUI running as another user must be able to read a LoRA."""

from __future__ import annotations

import os

import pytest
import torch

from sana.training.checkpoint import load_tensors, save_safetensors


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_safetensors_follow_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        save_safetensors({"w": torch.ones(2)}, tmp_path / "lora.safetensors", metadata={"format": "pt"})
    finally:
        os.umask(before)
    assert os.stat(tmp_path / "lora.safetensors").st_mode & 0o777 == mode
    assert torch.equal(load_tensors(tmp_path / "lora.safetensors")["w"], torch.ones(2))
