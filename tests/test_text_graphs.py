"""The text encoder's forward replayed from CUDA graphs: captured the second time a shape is seen, the width padded
so that a prompt's embeddings never depend on a replay; the plan decides where it may run."""

from __future__ import annotations

import pytest
import torch

from sana.embedded import embedded_model_dir
from sana.graphs import GraphedEncoder
from sana.text import TextEncoder
from tests.test_text_context import StandInCapture

NANO = embedded_model_dir("nano")
ITEMS = [("a large red circle on a white background", True), ("", False), ("a blue square at the top", True)]


class CpuGraphedEncoder(StandInCapture, GraphedEncoder):
    """The text encoder's graph wrapper, on the CPU."""


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_pretrained(NANO, dtype=torch.float32)


def test_a_shape_is_captured_the_second_time_and_replays_the_forward(encoder):
    model = encoder.model
    graphed = CpuGraphedEncoder(model)
    torch.manual_seed(0)
    ids = torch.randint(1, 200, (2, 64))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    other_ids = torch.randint(1, 200, (2, 64))
    with torch.no_grad():
        for i, (x, expected_captures) in enumerate([(ids, 0), (ids, 1), (other_ids, 1), (ids[:, :32], 1)]):
            m = mask[:, : x.shape[1]]
            assert torch.equal(graphed(x, m), model(x, attention_mask=m)), i
            assert graphed.captures == expected_captures, i
        graphed(ids[:, :32], mask[:, :32])  # the narrower shape's second sight
        assert graphed.captures == 2
        graphed.reset()
        graphed(ids, mask)
        assert graphed.captures == 2  # after a reset a shape starts over


def test_with_a_runner_the_width_is_padded_and_the_embeddings_stay(encoder):
    with torch.no_grad():
        plain = encoder.encode_many(ITEMS)
        encoder.runner = CpuGraphedEncoder(encoder.model)
        widths = []
        run_layers = encoder.model.run_layers
        encoder.model.run_layers = lambda x, rope, masks: widths.append(x.shape[1]) or run_layers(x, rope, masks)
        try:
            first, second = encoder.encode_many(ITEMS), encoder.encode_many(ITEMS)
        finally:
            encoder.runner = None
            del encoder.model.run_layers
    # the eager first sight, the capture's run and the replay's stand-in: every width padded
    assert len(widths) == 3 and all(w % GraphedEncoder.width_multiple == 0 for w in widths)
    assert encoder.runner is None
    for encoded in (first, second):
        assert torch.equal(encoded.mask, plain.mask)
        torch.testing.assert_close(encoded.embeds, plain.embeds, rtol=1e-5, atol=1e-5)
    assert torch.equal(first.embeds, second.embeds)  # replayed as computed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_graphs_in_the_image_pipeline(tmp_path):
    """On a GPU a resident plan replays the encoder from a graph from the second prompt of a shape on; the images
    are the ones the first (eager) encode gave."""
    import numpy as np

    from sana.pipelines.image import ImagePipeline, ImageRequest
    from tests.tiny_pipeline import build_pipeline

    build_pipeline(tmp_path, "sana")
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda")
    runner = pipe.text_encoder.runner
    assert isinstance(runner, GraphedEncoder) and runner is pipe.placement.text_runner
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=3, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    images = [np.asarray(pipe.generate(request).images[0]) for _ in range(3)]
    assert runner._captured
    assert all(np.array_equal(images[0], image) for image in images[1:])
