"""Forward benchmarks of the clip DiTs (SANA-Video 2B, SANA-WM 2.6B) at their real configs with random weights:
our engine against diffusers eager and diffusers + torch.compile, measured on one GPU in one run.

diffusers + torch.compile is timed in a child process with a time limit: compiling the WM DiT whole has taken
longer than eight minutes on an H200, and a benchmark that never returns reports nothing. Both ways diffusers
offers are timed: `torch.compile` of the whole model, and regional compilation (`compile_repeated_blocks`, which
compiles the repeated transformer block once for all of its instances: diffusers' advice for a short compile at
the same speed). Nothing here prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import SanaError
from .image import REAL_TEXT_TOKENS, _first_call, _median_ms, interleaved_ms

TEXT_TOKENS = 300
COMPILE_FORMS = ("regional", "whole")  # how diffusers' model is compiled; see `compiled_name`


@dataclass
class ClipDitRow:
    model: str
    frames: int  # pixel frames
    width: int
    height: int
    batch: int
    latent: tuple[int, int, int]  # (T, h, w)
    tflop: float
    ms: dict[str, float] = field(default_factory=dict)  # implementation -> median ms
    first_call_s: dict[str, float] = field(default_factory=dict)
    peak_gib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: dict[str, float] = field(default_factory=dict)  # ours vs diffusers eager, relative

    def best_ours(self) -> float:
        return min(v for k, v in self.ms.items() if k.startswith("ours"))

    def best_compiled(self) -> float | None:
        """The faster of diffusers' two compiled forms that finished (None if neither did)."""
        return min((v for k, v in self.ms.items() if k.startswith("diffusers+compile")), default=None)


def video_dit_flops(cfg: dict, tokens: int, text_tokens: int, batch: int) -> float:
    """Matmul FLOPs (2 x MACs) of one SANA-Video forward."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    hidden = int(cfg["mlp_ratio"] * d)
    hd = cfg["attention_head_dim"]
    per_token = (
        4 * d * d  # qkv + out
        + 4 * cfg["num_attention_heads"] * hd * hd  # K^T V and q (K^T V)
        + 2 * d * d + 2 * text_tokens * d  # cross-attention q + out, scores and values
        + 3 * d * hidden + 18 * hidden  # Mix-FFN 1x1 convs and the depthwise 3x3
        + 3 * d * d  # the temporal (3, 1) conv
    )
    return 2.0 * batch * tokens * per_token * cfg["num_layers"]


def world_dit_flops(cfg: dict, frames: int, per_frame: int, text_tokens: int, batch: int) -> float:
    """Matmul FLOPs of one SANA-WM forward: the GDN blocks' projections and state updates, the softmax blocks'
    attention over all tokens, the camera branches, cross-attention and the temporal Mix-FFN."""
    d = cfg.get("hidden_size", 2240)
    layers = cfg.get("num_layers", 20)
    every = cfg.get("softmax_every_n", 4)
    hd = cfg.get("linear_head_dim", 112)
    heads = d // hd
    hidden = int(cfg.get("mlp_ratio", 3.0) * d)
    tokens = frames * per_frame
    projections = 3 * d * d + d * d + 3 * d * d + d * d + d * d + d * d  # qkv, out, camera qkv + out, gate, plucker
    common = projections + 2 * d * d + 2 * text_tokens * d + 3 * d * hidden + 18 * hidden + 3 * d * d
    gdn_state = 2 * 3 * heads * hd * hd  # per token per stream: M K, update, M Q; two streams (main, camera)
    softmax = 2 * 2 * tokens * d  # q k^T and p v over all tokens, two branches
    softmax_layers = layers // every
    per_token = common * layers + gdn_state * 2 * (layers - softmax_layers) + softmax * softmax_layers
    return 2.0 * batch * tokens * per_token


def _peak(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _text(batch: int, channels: int, dtype: torch.dtype):
    text = torch.randn(batch, TEXT_TOKENS, channels, device="cuda", dtype=dtype)
    mask = torch.zeros(batch, TEXT_TOKENS, device="cuda", dtype=torch.long)
    mask[:, :REAL_TEXT_TOKENS] = 1
    return text, mask


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


# -- models and inputs --------------------------------------------------------------------------------------

def video_pair(name: str = "video-2b-480p", *, with_ours: bool = True):
    """diffusers' SanaVideoTransformer3DModel at a registry model's config with random weights, and ours loaded
    from it through the real loader (None without `with_ours`); both bf16 on the GPU."""
    from diffusers import SanaVideoTransformer3DModel

    from ..loading import load_video_transformer
    from ..registry import get_spec

    cfg = {k: v for k, v in get_spec(name).transformer.items() if not k.startswith("_")}
    torch.manual_seed(0)
    ref = SanaVideoTransformer3DModel(**cfg).to("cuda", torch.bfloat16).eval()
    if not with_ours:
        return cfg, ref, None
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "transformer")
        ours = load_video_transformer(Path(tmp), dtype=torch.bfloat16, device="cuda")
    return cfg, ref, ours


def world_pair(*, with_ours: bool = True):
    """diffusers' SanaWMTransformer3DModel at its class defaults (the released 2.6B) with random weights (the
    zero-initialised camera layers drawn too, so the camera branch does real work), and ours loaded from it."""
    from diffusers import SanaWMTransformer3DModel

    from ..loading import load_world_transformer

    torch.manual_seed(0)
    ref = SanaWMTransformer3DModel()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim and not p.any():
                p.normal_(0.0, 0.02)
    ref = ref.to("cuda", torch.bfloat16).eval()
    if not with_ours:
        return dict(ref.config), ref, None
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "transformer")
        ours = load_world_transformer(Path(tmp), dtype=torch.bfloat16, device="cuda")
    return dict(ref.config), ref, ours


def video_inputs(cfg: dict, frames: int, width: int, height: int, batch: int, vae_stride=(4, 8)):
    t_stride, s_stride = vae_stride
    latent = ((frames - 1) // t_stride + 1, height // s_stride, width // s_stride)
    x = torch.randn(batch, cfg["in_channels"], *latent, device="cuda", dtype=torch.bfloat16)
    text, mask = _text(batch, cfg["caption_channels"], torch.bfloat16)
    t = torch.full((batch,), 500.0, device="cuda")
    return latent, x, text, mask, t


def world_inputs(cfg: dict, frames: int, width: int, height: int, batch: int):
    """Latents, per-frame timesteps (frame 0 clean), text, and camera tensors of a slow forward dolly."""
    latent = ((frames - 1) // 8 + 1, height // 32, width // 32)
    t_lat, h, w = latent
    x = torch.randn(batch, cfg.get("in_channels", 128), *latent, device="cuda", dtype=torch.bfloat16)
    timestep = torch.full((batch, 1, t_lat), 700.0, device="cuda")
    timestep[:, :, 0] = 0
    text, mask = _text(batch, cfg.get("caption_channels", 2304), torch.bfloat16)
    poses = torch.eye(4, device="cuda").repeat(t_lat, 1, 1)
    poses[:, 2, 3] = torch.arange(t_lat, device="cuda") * 0.4
    intrinsics = torch.tensor([w * 0.9, w * 0.9, w / 2, h / 2], device="cuda").repeat(t_lat, 1)
    camera = torch.cat([poses.reshape(t_lat, 16), intrinsics], dim=1)[None].repeat(batch, 1, 1).to(torch.bfloat16)
    plucker = torch.randn(batch, cfg.get("chunk_plucker_channels", 48), *latent, device="cuda", dtype=torch.bfloat16)
    return latent, x, timestep, text, mask, camera, plucker


# -- the benchmarks -----------------------------------------------------------------------------------------

def bench_video_dit(*, frames: int = 81, width: int = 832, height: int = 480, batch: int = 2, compiled: bool = True,
                    compile_timeout_s: float = 420, name: str = "video-2b-480p") -> ClipDitRow:
    """SANA-Video 2B forward at (frames, width, height): diffusers eager, diffusers + torch.compile (child process),
    ours with the PyTorch reference ops, ours with the Triton kernels."""
    _require_cuda()
    cfg, ref, ours = video_pair(name)
    latent, x, text, mask, t = video_inputs(cfg, frames, width, height, batch)
    p = cfg["patch_size"]
    tokens = latent[0] // p[0] * (latent[1] // p[1]) * (latent[2] // p[2])
    row = ClipDitRow(name, frames, width, height, batch, latent, video_dit_flops(cfg, tokens, TEXT_TOKENS, batch) / 1e12)

    def diffusers_forward():
        return ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, return_dict=False)[0]

    def forward_of(model):
        return model(x, text, t, text_mask=mask)

    _measure(row, diffusers_forward, lambda: forward_of(ours))
    _measure_temporal_gemm(row, lambda: forward_of(ours))
    _measure_fp8(row, ours, forward_of)
    ref = ours = None  # the compiled run in the child process needs the memory
    torch.cuda.empty_cache()
    if compiled:
        for how in COMPILE_FORMS:
            _compiled_in_child(row, "video", dict(frames=frames, width=width, height=height, batch=batch, name=name,
                                                  compile=how), compile_timeout_s)
    return row


def bench_world_dit(*, frames: int = 161, width: int = 1280, height: int = 704, batch: int = 2, compiled: bool = True,
                    compile_timeout_s: float = 420) -> ClipDitRow:
    """SANA-WM 2.6B forward at (frames, width, height), camera on: diffusers eager, diffusers + torch.compile
    (child process, time-limited), ours with the PyTorch reference ops, ours with the Triton kernels."""
    _require_cuda()
    cfg, ref, ours = world_pair()
    latent, x, timestep, text, mask, camera, plucker = world_inputs(cfg, frames, width, height, batch)
    row = ClipDitRow("wm-2.6b", frames, width, height, batch, latent,
                     world_dit_flops(cfg, latent[0], latent[1] * latent[2], TEXT_TOKENS, batch) / 1e12)

    def diffusers_forward():
        return ref(x, timestep, text[:, None], encoder_attention_mask=mask, camera_conditions=camera,
                   chunk_plucker=plucker, return_dict=False)[0]

    def forward_of(model):
        return model(x, timestep, text, mask, camera=camera, plucker=plucker)

    _measure(row, diffusers_forward, lambda: forward_of(ours))
    _measure_fp8(row, ours, forward_of)
    ref = ours = None  # the compiled run in the child process needs the memory
    torch.cuda.empty_cache()
    if compiled:
        for how in COMPILE_FORMS:
            _compiled_in_child(row, "world", dict(frames=frames, width=width, height=height, batch=batch,
                                                  compile=how), compile_timeout_s)
    return row


def _measure(row: ClipDitRow, diffusers_forward: Callable, ours_forward: Callable) -> None:
    """diffusers eager, ours with the PyTorch reference ops and with the Triton kernels: median ms, first call,
    peak memory, and our relative error against diffusers' output."""
    from .. import ops

    row.first_call_s["diffusers"] = _first_call(diffusers_forward)
    row.peak_gib["diffusers"] = _peak(diffusers_forward)
    ops.set_kernels_enabled(False)
    row.ms["ours, torch ops"] = _median_ms(ours_forward)
    ops.set_kernels_enabled(True)
    row.first_call_s["ours, kernels"] = _first_call(ours_forward)
    row.peak_gib["ours, kernels"] = _peak(ours_forward)
    # The ratio the targets name, timed in turns so that drift over the run weighs on both sides.
    row.ms.update(interleaved_ms({"diffusers": diffusers_forward, "ours, kernels": ours_forward}))
    with torch.no_grad():
        row.error["ours vs diffusers"] = _relative(ours_forward(), diffusers_forward())


def _measure_temporal_gemm(row: ClipDitRow, ours_forward: Callable) -> None:
    """Ours with the temporal conv as the Triton implicit GEMM (y + conv(y) in one pass) against cuDNN's conv,
    timed in turns, with its error against our default output, as a note (`ops.set_temporal_conv_gemm`)."""
    from .. import ops

    def with_gemm():
        ops.set_temporal_conv_gemm(True)
        try:
            return ours_forward()
        finally:
            ops.set_temporal_conv_gemm(False)

    with torch.no_grad():
        error = _relative(with_gemm(), ours_forward())
    times = interleaved_ms({"cudnn": ours_forward, "gemm": with_gemm})
    row.ms["temporal conv as Triton GEMM"] = times["gemm"]  # not an "ours" key, as fp8's
    row.notes.append(f"temporal conv as a Triton implicit GEMM: {times['gemm']:.1f} ms against {times['cudnn']:.1f} "
                     f"ms with cuDNN's ({times['cudnn'] / times['gemm']:.3f}x), {error:.1e} relative to it")
    torch.cuda.empty_cache()


def _measure_fp8(row: ClipDitRow, model: torch.nn.Module, forward_of: Callable) -> None:
    """Ours with fp8 block linears (`sana video --fp8`), where the GPU has fp8 GEMMs: its median ms and its error
    against our bf16 output, as a note (the table compares bf16 with bf16)."""
    import copy

    from .. import ops
    from ..models.fp8 import quantize_blocks_fp8

    if not ops.fp8_supported(torch.device("cuda")):
        return
    quantized = copy.deepcopy(model)
    quantize_blocks_fp8(quantized)
    ms = _median_ms(lambda: forward_of(quantized))
    with torch.no_grad():
        error = _relative(forward_of(quantized), forward_of(model))
    row.ms["fp8 block linears"] = ms  # not an "ours" key: the bf16 comparisons leave it out
    row.error["fp8 vs ours bf16"] = error
    row.notes.append(f"--fp8 (block linears as fp8 GEMMs): {ms:.1f} ms, {ms / row.ms['diffusers']:.2f}x diffusers "
                     f"eager, {error:.3f} relative to our bf16 output")
    del quantized
    torch.cuda.empty_cache()


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SanaError("sana bench needs a CUDA GPU")


def compiled_name(how: str) -> str:
    """The row key of diffusers compiled `how`: "whole" (`torch.compile(model)`) or "regional"."""
    return "diffusers+compile" if how == "whole" else f"diffusers+compile ({how})"


def _compiled_in_child(row: ClipDitRow, kind: str, args: dict, timeout_s: float) -> None:
    """Time diffusers + torch.compile in a child process; a compile that outlasts `timeout_s` is reported as such."""
    command = [sys.executable, "-m", "sana.benchmarks.clip_dit", kind, json.dumps(args)]
    name = compiled_name(args["compile"])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        row.notes.append(f"{name}: no result within {timeout_s:.0f} s (compile still running)")
        return
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        row.notes.append(f"{name} failed after {time.perf_counter() - start:.0f} s: {tail}")
        return
    result = json.loads(lines[-1])
    row.first_call_s[name] = result["first_call_s"]
    row.ms[name] = result["ms"]


def _compile(model: torch.nn.Module, how: str):
    """diffusers' model compiled `how`: the whole forward, or its repeated blocks in place (then the model itself
    is called)."""
    if how == "whole":
        return torch.compile(model)
    if how == "regional":
        model.compile_repeated_blocks()
        return model
    raise ValueError(f"unknown compile form {how!r}")


def _child(kind: str, args: dict) -> dict:
    """The diffusers + torch.compile measurement, run in a child process (see `_compiled_in_child`)."""
    if kind == "video":
        cfg, ref, _ = video_pair(args["name"], with_ours=False)
        _, x, text, mask, t = video_inputs(cfg, args["frames"], args["width"], args["height"], args["batch"])
        compiled = _compile(ref, args.get("compile", "whole"))

        def forward():
            return compiled(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, return_dict=False)
    else:
        cfg, ref, _ = world_pair(with_ours=False)
        _, x, timestep, text, mask, camera, plucker = world_inputs(cfg, args["frames"], args["width"], args["height"],
                                                                   args["batch"])
        compiled = _compile(ref, args.get("compile", "whole"))

        def forward():
            return compiled(x, timestep, text[:, None], encoder_attention_mask=mask, camera_conditions=camera,
                            chunk_plucker=plucker, return_dict=False)
    first = _first_call(forward)
    return {"first_call_s": first, "ms": _median_ms(forward)}


if __name__ == "__main__":  # the child process of `_compiled_in_child`
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
