"""A denoising step without per-step launch overhead: the DiT forward captured in a CUDA graph.

`GraphedForward` wraps a model; each distinct input signature (shapes, dtypes, PAG layout) is captured once
and replayed afterwards. Inputs are copied into the graph's static buffers, so the timestep stays a device
tensor and no host sync happens inside a step. Off CUDA it simply calls the model.

A `TextContext` in place of the text is bound once per context, not once per step: graphs are captured reading a
filled static context (no key / value GEMMs inside them), one per text signature and shared by every graph of
that signature (other image sizes, PAG layouts), and a new context is loaded into it, block by block, the first
time it is passed. While `hold_capture()` says so, new signatures run eagerly and are captured at a later step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from .models.text_context import TextContext


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor | TextContext | None]
    output: torch.Tensor


@dataclass
class _StaticContext:
    """The static context graphs of one text signature read, and the context last loaded into it."""

    context: TextContext
    bound: weakref.ref


class GraphedForward:
    """Callable like the model: `(x, text, timestep, text_mask=None, guidance=None, **static_kwargs)`."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model = model
        self.warmup = warmup
        # While this returns True, a signature not yet captured runs eagerly: a capture must not meet another
        # thread's CUDA work (the decoder's warm-up), and waiting for that work would cost more than a few
        # uncaptured steps.
        self.hold_capture: Callable[[], bool] | None = None
        self._captured: dict[tuple, _Captured] = {}
        self._contexts: dict[tuple, _StaticContext] = {}  # text signature -> the static context its graphs read
        # One memory pool for all of this model's graphs: a graph's intermediates are dead between its replays and
        # every output is copied out at once, so graphs for other prompt lengths or sizes cost little more than
        # their outputs, not a pool of activations each. Replays never overlap (one stream, one caller).
        self._pool = None

    @property
    def config(self):
        return self.model.config

    def __call__(self, x, text, timestep, text_mask=None, guidance=None, **static) -> torch.Tensor:
        if not self._replayable(x):
            return self.model(x, text, timestep, text_mask=text_mask, guidance=guidance, **static)
        inputs = {"x": x, "text": text, "timestep": timestep, "text_mask": text_mask, "guidance": guidance}
        key = tuple((k, _signature(v)) for k, v in inputs.items())
        key += tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in static.items()))
        entry = self._captured.get(key)
        if entry is None and self.hold_capture is not None and self.hold_capture():
            return self.model(x, text, timestep, text_mask=text_mask, guidance=guidance, **static)
        if isinstance(text, TextContext):
            self._bind_context(text)  # before a capture too: the graph then runs on this context's values
        if entry is None:
            entry = self._capture(inputs, static)
            self._captured[key] = entry
        for name, value in inputs.items():
            if value is not None and not isinstance(value, TextContext):
                entry.inputs[name].copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _replayable(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not torch.is_grad_enabled()

    def _bind_context(self, context: TextContext) -> None:
        """Make `context`'s values those of the static context of its signature (made on first use)."""
        signature = context.signature()
        shared = self._contexts.get(signature)
        if shared is None:
            self._contexts[signature] = _StaticContext(context.static_copy(self.model.blocks), weakref.ref(context))
        elif shared.bound() is not context:  # a new image's text; the same image's next step finds it in place
            shared.context.load_from(context, self.model.blocks)
            shared.bound = weakref.ref(context)

    def _capture(self, inputs: dict, static: dict) -> _Captured:
        buffers = {k: self._contexts[v.signature()].context if isinstance(v, TextContext) else
                   None if v is None else v.clone() for k, v in inputs.items()}

        def run():
            return self.model(buffers["x"], buffers["text"], buffers["timestep"], text_mask=buffers["text_mask"],
                              guidance=buffers["guidance"], **static)

        graph, output = self._record(run)
        return _Captured(graph, buffers, output)

    def _record(self, run) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return record(run, self.warmup, pool=self._pool)

    def reset(self) -> None:
        """Drop every captured graph (and the memory their pool holds) and the static contexts they read."""
        self._captured.clear()
        self._contexts.clear()
        self._pool = None


def record(run: Callable[[], torch.Tensor], warmup: int, pool=None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`run` warmed up on a side stream (Triton compiles, cuBLAS picks its algorithms), then captured (into `pool`
    when given, a pool other graphs share): the graph and the output tensor its replays write."""
    from .trace import span

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with span("graph warm-up"), torch.cuda.stream(stream):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with span("graph capture"), torch.cuda.graph(graph, pool=pool):
        output = run()
    return graph, output


class GraphedEncoder:
    """Gemma-2's layers (`Gemma2Encoder.run_layers`) replayed from a CUDA graph per input shape: the encoder's
    forward at the few dozen to few hundred tokens of a prompt is launch-bound (~50 ms eager for Gemma-2-2B on an
    H200, a few ms of GPU work). Callable like the model, `(input_ids, attention_mask)`.

    A shape is captured the second time it is seen, not the first: a single image pays no capture. Callers pad the
    width to a multiple of `width_multiple` (right padding: a causal model's real tokens never see it) so that
    prompts of similar lengths share a graph."""

    width_multiple = 64

    def __init__(self, model: torch.nn.Module, warmup: int = 1):
        self.model = model
        self.warmup = warmup
        self._seen: dict[tuple, int] = {}
        self._captured: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self._replayable(input_ids):
            return self.model(input_ids, attention_mask)
        x, rope, masks = self.model.prepare(input_ids, attention_mask)
        inputs = {"x": x, "cos": rope[0], "sin": rope[1], **masks}
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        entry = self._captured.get(key)
        if entry is None:
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < 2:
                return self.model.run_layers(x, rope, masks)
            entry = self._capture(inputs, list(masks))
            self._captured[key] = entry
        graph, buffers, output = entry
        for name, value in inputs.items():
            buffers[name].copy_(value)
        graph.replay()
        return output.clone()

    def _replayable(self, input_ids: torch.Tensor) -> bool:
        return input_ids.is_cuda and not torch.is_grad_enabled()

    def _capture(self, inputs: dict[str, torch.Tensor], mask_names: list[str]):
        buffers = {name: t.clone() for name, t in inputs.items()}

        def run():
            return self.model.run_layers(buffers["x"], (buffers["cos"], buffers["sin"]),
                                         {name: buffers[name] for name in mask_names})

        graph, output = self._record(run)
        return graph, buffers, output

    def _record(self, run) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        return record(run, self.warmup)

    def reset(self) -> None:
        """Drop every captured graph (and the memory its pool holds)."""
        self._seen.clear()
        self._captured.clear()


def _signature(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, TextContext):
        return ("context", *value.signature())
    return tuple(value.shape), value.dtype

