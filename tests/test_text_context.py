"""The text's keys and values computed once per image (`sana.models.text_context`): the same outputs as the raw
text at every step, one key / value GEMM a block per loop, eager and through the CUDA-graph wrapper's binding
(replayed here by a stand-in graph on the CPU), and nothing kept under autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sana.graphs import GraphedForward
from sana.loading import load_transformer, load_video_transformer
from sana.models.text_context import TextContext
from sana.text import PromptEmbeddings
from tests import tiny_transformer, tiny_video


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image")
    ref = tiny_transformer.build_reference("sana1.5", folder)
    return ref, load_transformer(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    ref = tiny_video.build_reference("wan", folder / "transformer")
    return ref, load_video_transformer(folder)


class KeyValueCalls:
    """Counts the cross-attention key / value projections run while active."""

    def __init__(self, model):
        self.count = 0
        self.handles = [block.cross_attn.kv.register_forward_hook(self._seen) for block in model.blocks]

    def _seen(self, *_):
        self.count += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


def _steps(model, x, t):
    """Three denoising-like calls: different latents and timesteps, the same text."""
    return [(x * (1 + 0.1 * i), t * (1 - 0.2 * i)) for i in range(3)]


@pytest.mark.parametrize("which", ["image", "video"])
def test_a_context_gives_the_raw_texts_output_with_one_projection_a_block(which, image_model, video_model):
    ref, model = image_model if which == "image" else video_model
    helpers = tiny_transformer if which == "image" else tiny_video
    x, text, mask, t, *_ = helpers.inputs(ref)
    calls = KeyValueCalls(model)
    try:
        with torch.no_grad():
            context = model.text_context(text, mask)
            for xi, ti in _steps(model, x, t):
                expected = model(xi, text, ti, text_mask=mask)
                calls.count = 0
                assert torch.equal(model(xi, context, ti), expected)
                assert calls.count <= len(model.blocks)
            calls.count = 0
            ours = model(x, context, t)
            assert calls.count == 0  # every block's keys and values are kept after the first step
        assert all(kv is not None for kv in context.keys_values)
        # and so does diffusers (the parity suites test the raw text at more shapes)
        assert tiny_transformer.relative_error(ours, helpers.reference_output(ref, x, text, mask, t)) < 1e-5
    finally:
        calls.close()


@pytest.mark.parametrize("which", ["image", "video"])
def test_prompts_trimmed_after_their_last_real_token_give_the_full_widths_output(which, image_model, video_model):
    """The pipelines denoise with `PromptEmbeddings.trimmed()`: the positions up to the batch's longest prompt
    (rounded up to 64). The output is the full-width one (the dropped keys' softmax weights are exactly zero) and
    diffusers' at the full 300."""
    ref, model = image_model if which == "image" else video_model
    helpers = tiny_transformer if which == "image" else tiny_video
    x, text, _, t, *_ = helpers.inputs(ref)
    text = torch.randn(text.shape[0], 300, text.shape[-1], generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(text.shape[0], 300, dtype=torch.long)
    mask[0, :9] = 1
    mask[-1, :70] = 1
    rows = PromptEmbeddings(text, mask).trimmed()
    assert rows.embeds.shape[1] == 128
    with torch.no_grad():
        ours = model(x, model.text_context(rows.embeds, rows.mask), t)
        full = model(x, text, t, text_mask=mask)  # a forward's own context keeps all 300
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    assert tiny_transformer.relative_error(ours, helpers.reference_output(ref, x, text, mask, t)) < 1e-5


def test_a_context_carries_its_own_mask(image_model):
    ref, model = image_model
    x, text, mask, t, _ = tiny_transformer.inputs(ref)
    with torch.no_grad():
        context = model.text_context(text, mask)
        with pytest.raises(ValueError, match="carries its own mask"):
            model(x, context, t, text_mask=mask)


def test_nothing_is_kept_under_autograd_and_gradients_match(image_model):
    ref, model = image_model
    x, text, mask, t, _ = tiny_transformer.inputs(ref)
    kv_weight = model.blocks[0].cross_attn.kv.weight

    def gradient(use_context: bool, checkpointing: bool):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        try:
            given = model.text_context(text, mask) if use_context else text
            out = model(x, given, t, text_mask=None if use_context else mask)
            out.square().mean().backward()
        finally:
            model.gradient_checkpointing = False
        if use_context:
            assert all(kv is None for kv in given.keys_values)
        return kv_weight.grad.clone()

    expected = gradient(False, False)
    for use_context, checkpointing in [(True, False), (True, True), (False, True)]:
        assert torch.allclose(gradient(use_context, checkpointing), expected, rtol=1e-5, atol=1e-7)
    model.zero_grad()


class StandInGraph:
    """Replays by running the forward again on the captured buffers, writing into the captured output: what a
    CUDA graph's replay does, for the binding logic to be tested on a CPU."""

    def __init__(self, run, output):
        self.run, self.output = run, output

    def replay(self):
        self.output.copy_(self.run())


class StandInCapture:
    """A graph wrapper's CUDA parts stood in for (mixed in before it): replayable on the CPU, `StandInGraph`s
    recorded and counted."""

    captures = 0

    def _replayable(self, x):
        return not torch.is_grad_enabled()

    def _record(self, run):
        self.captures += 1
        output = run()
        return StandInGraph(run, output), output


class CpuGraphedForward(StandInCapture, GraphedForward):
    """The DiT step's graph wrapper, on the CPU."""


@pytest.mark.parametrize("which", ["image", "video"])
def test_the_graph_wrapper_loads_each_context_once(which, image_model, video_model):
    ref, model = image_model if which == "image" else video_model
    helpers = tiny_transformer if which == "image" else tiny_video
    x, text, mask, t, *_ = helpers.inputs(ref)
    other_text = torch.randn_like(text)
    graphed = CpuGraphedForward(model)
    graphed.captures = 0
    calls = KeyValueCalls(model)
    try:
        with torch.no_grad():
            first, second = model.text_context(text, mask), model.text_context(other_text, mask)
            for context, raw in [(first, text), (second, other_text), (first, text)]:
                calls.count = 0
                for i, (xi, ti) in enumerate(_steps(model, x, t)):
                    out = graphed(xi, context, ti)
                    assert torch.equal(out, model(xi, raw, ti, text_mask=mask)), (i, raw is text)
                # the wrapper computed this context's keys and values once (the eager reference above adds its own)
                assert calls.count == len(model.blocks) * (1 + 3)
        assert graphed.captures == 1  # one signature, one capture
        assert all(kv is None for kv in first.keys_values)  # the contexts were read, never filled by the wrapper
        # Another latent size: a graph of its own, reading the same static context, still bound to `first`.
        calls.count = 0
        small = x[..., :-2] if which == "image" else x[..., :-2, :]
        with torch.no_grad():
            out = graphed(small, first, t)
            assert graphed.captures == 2 and len(graphed._contexts) == 1 and calls.count == 0
            assert torch.equal(out, model(small, text, t, text_mask=mask))
            calls.count = 0
            out = graphed(x, second, t)  # the first graph, a new text: loaded once into the shared static context
            assert calls.count == len(model.blocks)
            assert torch.equal(out, model(x, other_text, t, text_mask=mask))
    finally:
        calls.close()


def test_the_image_pipeline_projects_the_text_once_per_generation(tmp_path):
    from sana.pipelines.image import ImagePipeline, ImageRequest
    from tests.tiny_pipeline import build_pipeline

    build_pipeline(tmp_path, "sana")
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    request = ImageRequest(prompt="a red circle", seeds=[1, 2], width=64, height=64, steps=4, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    calls = KeyValueCalls(pipe.transformer)
    try:
        images = pipe.generate(request).images
        assert calls.count == len(pipe.transformer.blocks)
    finally:
        calls.close()
    assert len(images) == 2 and all(np.asarray(image).std() > 0 for image in images)


def test_a_static_context_is_overwritten_in_place(image_model):
    ref, model = image_model
    _, text, mask, _, _ = tiny_transformer.inputs(ref)
    with torch.no_grad():
        static = model.text_context(text, mask).static_copy(model.blocks)
        pointers = [(k.data_ptr(), v.data_ptr()) for k, v in static.keys_values]
        other = model.text_context(torch.randn_like(text), mask)
        static.load_from(other, model.blocks)
        other.fill(model.blocks)
    assert [(k.data_ptr(), v.data_ptr()) for k, v in static.keys_values] == pointers
    for (k, v), (k2, v2) in zip(static.keys_values, other.keys_values):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert isinstance(static, TextContext) and torch.equal(static.text, other.text)


@pytest.mark.gpu
def test_real_cuda_graphs_bind_each_context_once(image_model):
    """The same as the stand-in test above, through real capture and replay on a GPU."""
    ref, cpu_model = image_model
    model = copy.deepcopy(cpu_model).cuda()
    x, text, mask, t = (v.cuda() for v in tiny_transformer.inputs(ref)[:4])
    graphed = GraphedForward(model)
    with torch.no_grad():
        contexts = [(model.text_context(raw, mask), raw) for raw in (text, torch.randn_like(text))]
        for context, raw in contexts + contexts[:1]:
            for xi, ti in _steps(model, x, t):
                torch.testing.assert_close(graphed(xi, context, ti), model(xi, raw, ti, text_mask=mask),
                                           rtol=1e-5, atol=1e-5)
    assert len(graphed._captured) == 1


@pytest.mark.gpu
def test_graphs_of_other_prompt_lengths_share_one_pool_in_any_order(image_model):
    """Prompts trimmed to other lengths (as the pipelines trim them) are other signatures: a graph each, all
    captured into one memory pool; replayed in any order, each gives its eager output at the full width."""
    ref, cpu_model = image_model
    model = copy.deepcopy(cpu_model).cuda()
    x, _, _, t = (v.cuda() for v in tiny_transformer.inputs(ref)[:4])
    gen = torch.Generator().manual_seed(5)
    texts, masks = [], []
    for real in (10, 100, 200):
        texts.append(torch.randn(x.shape[0], 300, ref.config.caption_channels, generator=gen).cuda())
        mask = torch.zeros(x.shape[0], 300, dtype=torch.long, device="cuda")
        mask[:, :real] = 1
        masks.append(mask)
    graphed = GraphedForward(model)
    with torch.no_grad():
        rows = [PromptEmbeddings(text, mask).trimmed() for text, mask in zip(texts, masks)]
        contexts = [model.text_context(r.embeds, r.mask) for r in rows]
        assert [c.text.shape[1] for c in contexts] == [64, 128, 256]
        for i in (0, 1, 2, 1, 0, 2, 0):
            for xi, ti in _steps(model, x, t):
                # the full-width eager forward sums its softmax over more (zero) terms: ~1e-5 apart, not bit equal
                torch.testing.assert_close(graphed(xi, contexts[i], ti),
                                           model(xi, texts[i], ti, text_mask=masks[i]), rtol=1e-4, atol=1e-4)
    assert len(graphed._captured) == 3 and graphed._pool is not None


def test_steps_run_uncaptured_while_the_capture_is_held(image_model):
    """`hold_capture` (the decoder warming up on its thread): new signatures run eagerly, captured once released."""
    ref, model = image_model
    x, text, mask, t, *_ = tiny_transformer.inputs(ref)
    graphed = CpuGraphedForward(model)
    graphed.captures = 0
    held = [True]
    graphed.hold_capture = lambda: held[0]
    with torch.no_grad():
        context = model.text_context(text, mask)
        for i, (xi, ti) in enumerate(_steps(model, x, t)):
            if i == 2:
                held[0] = False
            assert torch.equal(graphed(xi, context, ti), model(xi, text, ti, text_mask=mask)), i
            assert graphed.captures == (0 if i < 2 else 1), i
        held[0] = True  # a captured signature replays whatever the hold says
        assert torch.equal(graphed(x, context, t), model(x, text, t, text_mask=mask))
        assert graphed.captures == 1
