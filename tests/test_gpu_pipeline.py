"""On a GPU: the whole pipeline with Triton kernels and CUDA graphs gives the image the reference path gives."""

from __future__ import annotations

import pytest
import torch

from sana import ops
from sana.pipelines.image import ImagePipeline, ImageRequest
from tests.cli_helpers import psnr
from tests.tiny_pipeline import build_pipeline

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind", ["sana", "sprint"])
def test_kernels_and_graphs_keep_the_image(kind, tmp_path):
    build_pipeline(tmp_path, kind)
    sprint = kind == "sprint"
    request = ImageRequest(prompt="a red circle", seeds=[3, 4], width=64, height=96, steps=2 if sprint else 6,
                           guidance=4.5, sampler="scm" if sprint else "flow-dpm", flow_shift=3.0,
                           pag=0.0 if sprint else 2.0, pag_layers=(1,))
    images = {}
    for name, kernels, graphs in (("reference", False, False), ("fast", True, True)):
        ops.set_kernels_enabled(kernels)
        try:
            pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda", cuda_graphs=graphs)
            images[name] = pipe.generate(request).images
            if graphs:
                assert pipe.denoiser is not pipe.transformer
        finally:
            ops.set_kernels_enabled(True)
    for ours, ref in zip(images["fast"], images["reference"]):
        assert psnr(ours, ref) >= 40


def test_warming_while_loading_keeps_the_image(tmp_path):
    """`warm_for` runs the text encoder and the decoder once during the load; the images are the same."""
    import numpy as np

    build_pipeline(tmp_path, "sana")
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=4, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    images = [ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda", warm_for=warm)
              .generate(request).images[0] for warm in (None, (64, 96))]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_steps_run_beside_the_decoder_warm_up_then_are_captured(tmp_path, monkeypatch):
    """The first steps run eagerly while the decoder warms up on its thread (held here until a step has run),
    later ones from a captured graph; the image is the one a pipeline without warm-up makes."""
    import threading

    import numpy as np

    from sana.graphs import GraphedForward
    from sana.models.dcae import DCAEDecoder

    build_pipeline(tmp_path, "sana")
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=6, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    plain = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda").generate(request).images[0]
    stepped, seen, decode = threading.Event(), [], DCAEDecoder.decode

    def decode_after_a_step(self, x, tile=None):
        if not seen:  # the warm-up
            seen.append(stepped.wait(60))
        return decode(self, x, tile=tile)

    monkeypatch.setattr(DCAEDecoder, "decode", decode_after_a_step)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda", warm_for=(64, 96))
    pipe.transformer.register_forward_pre_hook(lambda module, args: stepped.set())
    image = pipe.generate(request).images[0]
    assert seen == [True] and isinstance(pipe.denoiser, GraphedForward)
    again = pipe.generate(request).images[0]
    assert pipe.denoiser._captured  # captured once the warm-up had ended
    for made in (image, again):
        assert np.abs(np.asarray(made, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).max() <= 1
