"""Out-of-memory handling in the pipeline: decode falls back to tiles with a notice; denoise fails in one line."""

from __future__ import annotations

import pytest
import torch

from sana.errors import SanaError
from sana.pipeline import Events, ImagePipeline, ImageRequest
from tests.cli_helpers import psnr
from tests.tiny_pipeline import build_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_pipeline(path, "sana")
    return ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu")


REQUEST = ImageRequest(prompt="a red circle", seeds=[1], width=64, height=64, steps=3, guidance=4.5,
                       sampler="flow-dpm", flow_shift=3.0)


def test_decode_out_of_memory_retries_in_tiles(pipe, monkeypatch):
    expected = pipe.generate(REQUEST).images[0]
    real_decode = pipe.vae.decode
    calls = []

    def decode(*args, **kwargs):
        calls.append(pipe.vae.use_tiling)
        if not pipe.vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", decode)
    notices = []
    try:
        image = pipe.generate(REQUEST, Events(on_notice=notices.append)).images[0]
    finally:
        pipe.vae.disable_tiling()
    assert calls == [False, True]
    assert len(notices) == 1 and "tiles" in notices[0]
    assert psnr(image, expected) >= 45  # tiles larger than the image: the same pixels


def test_decode_out_of_memory_even_in_tiles_is_one_error(pipe, monkeypatch):
    def decode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipe.vae, "decode", decode)
    try:
        with pytest.raises(SanaError, match="even in tiles"):
            pipe.generate(REQUEST)
    finally:
        pipe.vae.disable_tiling()


def test_denoise_out_of_memory_is_one_error(pipe, monkeypatch):
    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipe, "denoiser", forward)
    with pytest.raises(SanaError, match="out of GPU memory while denoising at 64x64"):
        pipe.generate(REQUEST)
