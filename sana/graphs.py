"""A denoising step without per-step launch overhead: the DiT forward captured in a CUDA graph.

`GraphedForward` wraps a model; each distinct input signature (shapes, dtypes, PAG layout) is captured once
and replayed afterwards. Inputs are copied into the graph's static buffers, so the timestep stays a device
tensor and no host sync happens inside a step. Off CUDA it simply calls the model.

A `TextContext` in place of the text is bound once per context, not once per step: the graph is captured with a
filled static context (no key / value GEMMs inside it), and a new context is loaded into that one, block by block,
the first time it is passed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from .models.text_context import TextContext


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor | TextContext | None]
    output: torch.Tensor
    bound_context: weakref.ref | None = field(default=None)  # the context last loaded into the static one


class GraphedForward:
    """Callable like the model: `(x, text, timestep, text_mask=None, guidance=None, **static_kwargs)`."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model = model
        self.warmup = warmup
        self._captured: dict[tuple, _Captured] = {}

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
        if entry is None:
            entry = self._capture(inputs, static)
            if isinstance(text, TextContext):  # captured on a copy of this very context
                entry.bound_context = weakref.ref(text)
            self._captured[key] = entry
        for name, value in inputs.items():
            if isinstance(value, TextContext):
                self._bind_context(entry, value)
            elif value is not None:
                entry.inputs[name].copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _replayable(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not torch.is_grad_enabled()

    def _bind_context(self, entry: _Captured, context: TextContext) -> None:
        if entry.bound_context is not None and entry.bound_context() is context:
            return  # the same image's next step: its keys and values are already in place
        entry.inputs["text"].load_from(context, self.model.blocks)
        entry.bound_context = weakref.ref(context)

    def _capture(self, inputs: dict, static: dict) -> _Captured:
        buffers = {k: _static_copy(v, self.model) for k, v in inputs.items()}

        def run():
            return self.model(buffers["x"], buffers["text"], buffers["timestep"], text_mask=buffers["text_mask"],
                              guidance=buffers["guidance"], **static)

        # Warm up on a side stream (Triton compiles, cuBLAS picks its algorithms), then capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = run()
        return _Captured(graph, buffers, output)

    def reset(self) -> None:
        """Drop every captured graph (and the memory its pool holds)."""
        self._captured.clear()


def _signature(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, TextContext):
        return ("context", *value.signature())
    return tuple(value.shape), value.dtype


def _static_copy(value, model: torch.nn.Module):
    if value is None:
        return None
    if isinstance(value, TextContext):
        return value.static_copy(model.blocks)
    return value.clone()
