"""Loading side by side and warming while loading: the same pipeline, the same images."""

from __future__ import annotations

import threading

import numpy as np
import torch

from sana.pipelines import image as image_pipeline
from sana.pipelines.image import ImagePipeline, ImageRequest
from tests.tiny_pipeline import build_pipeline


def test_warming_while_loading_runs_the_encoder_and_decoder_once_and_keeps_the_image(tmp_path, monkeypatch):
    build_pipeline(tmp_path, "sana")
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=3, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    plain = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", warm_for=(64, 96))
    assert not image_pipeline.warms_while_loading("cpu")  # nothing to warm on a CPU

    calls = []
    monkeypatch.setattr(image_pipeline, "warms_while_loading", lambda device: True)
    from sana.models.dcae import DCAEDecoder
    from sana.text import TextEncoder

    decode, encode_many = DCAEDecoder.decode, TextEncoder.encode_many
    decoding_threads = []
    monkeypatch.setattr(DCAEDecoder, "decode", lambda self, x, tile=None: calls.append(("decode", tuple(x.shape)))
                        or decoding_threads.append(threading.current_thread().name) or decode(self, x, tile=tile))
    monkeypatch.setattr(TextEncoder, "encode_many", lambda self, items: calls.append(("encode", len(items)))
                        or encode_many(self, items))
    warmed = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", warm_for=(64, 96))
    warmed.decoder_thread.wait_warm()  # the decoder warms on its own thread
    scale = warmed.vae_scale_factor
    gen_w, gen_h = image_pipeline.binned_size(64, 96, warmed.native_resolution)
    assert sorted(calls) == [("decode", (1, warmed.vae.config.latent_channels, gen_h // scale, gen_w // scale)),
                             ("encode", 2)]
    images = [pipe.generate(request).images[0] for pipe in (plain, warmed)]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    # the warmed pipeline's warm-up and decode on one thread, which holds cuDNN's plans on a GPU; the plain one's
    # decode (no decoder thread off CUDA) in the caller's
    assert decoding_threads == ["sana-decode_0", "MainThread", "sana-decode_0"]


def test_a_warm_up_out_of_memory_is_skipped_not_fatal(tmp_path, monkeypatch):
    """Warming is a head start: running out of memory there leaves the first image to the plan's fallbacks."""
    build_pipeline(tmp_path, "sana")
    monkeypatch.setattr(image_pipeline, "warms_while_loading", lambda device: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)  # nothing to free on a CPU
    from sana.models.dcae import DCAEDecoder

    def full(self, x, tile=None):
        raise torch.OutOfMemoryError("no room for the warm-up")

    monkeypatch.setattr(DCAEDecoder, "decode", full)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", warm_for=(64, 96))
    assert pipe.vae is not None


def test_the_decoder_thread_returns_results_and_raises_errors_where_asked():
    from sana.pipelines.common import DecoderThread

    worker = DecoderThread(torch.device("cpu"))
    worker.warm(lambda: (_ for _ in ()).throw(RuntimeError("lost head start")))
    worker.wait_warm()  # a failed warm-up is not an error of its own
    assert worker.run(lambda: (torch.is_grad_enabled(), threading.current_thread().name)) == (False, "sana-decode_0")
    try:
        worker.run(lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("full")))
    except torch.OutOfMemoryError as exc:  # the type the pipeline's fallbacks catch
        assert "full" in str(exc)
    else:
        raise AssertionError("the error was not raised")
    worker.close()


def _warm_up_waiting_for_a_step(tmp_path, monkeypatch, timeout: float):
    """A pipeline whose decoder warm-up waits (up to `timeout` s) for the first denoising step; returns it, the
    first image of the request below, and whether the warm-up saw a step before it ended."""
    build_pipeline(tmp_path, "sana")
    monkeypatch.setattr(image_pipeline, "warms_while_loading", lambda device: True)
    from sana.models.dcae import DCAEDecoder

    stepped, seen, decode = threading.Event(), [], DCAEDecoder.decode

    def decode_after_a_step(self, x, tile=None):
        if not seen:  # the warm-up
            seen.append(stepped.wait(timeout))
        return decode(self, x, tile=tile)

    monkeypatch.setattr(DCAEDecoder, "decode", decode_after_a_step)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu", warm_for=(64, 96))
    pipe.transformer.register_forward_pre_hook(lambda module, args: stepped.set())
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=3, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    image = pipe.generate(request).images[0]
    return pipe, image, seen[0]


def test_the_first_steps_run_while_the_decoder_warms_up_when_both_fit(tmp_path, monkeypatch):
    pipe, image, saw_a_step = _warm_up_waiting_for_a_step(tmp_path, monkeypatch, timeout=60)
    assert saw_a_step and not pipe.decoder_thread.warming()
    monkeypatch.undo()
    plain = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    request = ImageRequest(prompt="a red circle", seeds=[3], width=64, height=96, steps=3, guidance=4.5,
                           sampler="flow-dpm", flow_shift=3.0)
    assert np.array_equal(np.asarray(image), np.asarray(plain.generate(request).images[0]))


def test_the_first_steps_wait_for_the_decoder_warm_up_when_both_do_not_fit(tmp_path, monkeypatch):
    from sana.memory import MemoryPlan

    monkeypatch.setattr(MemoryPlan, "fits_at_once", lambda self, *phases: False)
    _, image, saw_a_step = _warm_up_waiting_for_a_step(tmp_path, monkeypatch, timeout=0.5)
    assert not saw_a_step and np.asarray(image).std() > 0
