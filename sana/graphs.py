"""A denoising step without per-step launch overhead: the DiT forward captured in a CUDA graph.

`GraphedForward` wraps a model; each distinct input signature (shapes, dtypes, PAG layout) is captured once
and replayed afterwards. Inputs are copied into the graph's static buffers, so the timestep stays a device
tensor and no host sync happens inside a step. Off CUDA it simply calls the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor | None]
    output: torch.Tensor


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
        if not x.is_cuda or torch.is_grad_enabled():
            return self.model(x, text, timestep, text_mask=text_mask, guidance=guidance, **static)
        inputs = {"x": x, "text": text, "timestep": timestep, "text_mask": text_mask, "guidance": guidance}
        key = tuple((k, None if v is None else (tuple(v.shape), v.dtype)) for k, v in inputs.items())
        key += tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in static.items()))
        entry = self._captured.get(key)
        if entry is None:
            entry = self._capture(inputs, static)
            self._captured[key] = entry
        for name, value in inputs.items():
            if value is not None:
                entry.inputs[name].copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, inputs: dict, static: dict) -> _Captured:
        buffers = {k: None if v is None else v.clone() for k, v in inputs.items()}

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
