"""SANA 1.6B at 4096 px under GPU memory caps, with the automatic memory plan, against diffusers' hand-set offload.

Random weights at the real configs (the 4K DiT, Gemma-2-2B, DC-AE f32c32) are saved once as a diffusers folder and
loaded the way `sana gen` loads them. For each cap (torch.cuda.set_per_process_memory_fraction) the script plans,
loads, generates once to warm up (Triton JIT, allocator) and once timed, and reports the plan, the predicted and
the measured peak (torch.cuda.max_memory_allocated) and the time. diffusers' SanaPipeline runs with
enable_model_cpu_offload() + vae.enable_tiling() under the 8 GiB cap and plain on the GPU uncapped. Last, the DC-AE
4096 px decode alone with the tiles each cap's plan chose, by our decoder and by diffusers' AutoencoderDC. Every case runs in its own try/except: a failure is a
row with its error, not the end of the run. About 5 minutes on an H100.

    python scripts/bench_memory.py                      # on a CUDA GPU; prints a Markdown section
    python scripts/bench_memory.py --markdown BENCHMARKS.md
    python scripts/bench_memory.py --tiny               # tiny configs on the CPU: checks the script's paths
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sana.device import GiB, DeviceInfo, probe_device  # noqa: E402
from sana.memory import Workload, plan_memory, sizes_from_directory, sizes_from_spec  # noqa: E402

CAPS_GIB = (4, 6, 8, 12, 24)
DIFFUSERS_CAP_GIB = 8
PROMPT = "a photo of a cat sleeping on a sunny windowsill, highly detailed"


@dataclass
class Row:
    case: str
    plan: str = "-"
    tiles: str = "-"
    predicted_gib: float | None = None
    peak_gib: float | None = None  # max_memory_allocated during the timed run
    reserved_gib: float | None = None  # max_memory_reserved: what the cap limits
    seconds: float | None = None
    phases: dict = field(default_factory=dict)
    load_seconds: float | None = None
    note: str = ""


# -- building the model folder --------------------------------------------------------------------------

def build_model(folder: Path, *, tiny: bool, device: str, model: str = "sana-1.6b-4k") -> None:
    """A diffusers SanaPipeline folder with random weights: the registry `model`'s DiT config with the released
    Gemma-2-2B and DC-AE configs, or tiny ones for --tiny."""
    from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    from sana.benchmarks.image import DCAE_F32C32, GEMMA2_2B
    from sana.registry import get_spec
    from sana.sampling import make_scheduler
    from sana.text import COMPLEX_HUMAN_INSTRUCTION
    from sana.tokenizer import train_gemma_style_bpe

    dtype = torch.float32 if tiny else torch.bfloat16
    if tiny:
        dit = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8, num_layers=4,
                   num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                   caption_channels=40, mlp_ratio=2.5, sample_size=16, interpolation_scale=2.0)
        vae = dict(in_channels=3, latent_channels=8, attention_head_dim=4,
                   encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                   decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                   encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
                   encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                   encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                   decoder_norm_types="rms_norm", decoder_act_fns="silu", upsample_block_type="interpolate",
                   downsample_block_type="Conv", scaling_factor=0.41407)
        text = dict(vocab_size=768, hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=64,
                    pad_token_id=0, bos_token_id=2, eos_token_id=1)
    else:
        dit = {k: v for k, v in get_spec(model).transformer.items() if not k.startswith("_")}
        vae, text = DCAE_F32C32, GEMMA2_2B
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: minutes faster than on the CPU at these sizes
        parts = dict(transformer=SanaTransformer2DModel(**dit).to(dtype), vae=AutoencoderDC(**vae).to(dtype),
                     text_encoder=Gemma2Model(Gemma2Config(**text)).to(dtype))
    tokenizer = train_gemma_style_bpe(["\n".join(COMPLEX_HUMAN_INSTRUCTION), PROMPT] * 4, folder / "_tokenizer")
    scheduler = make_scheduler("flow-dpm", flow_shift=3.0, reference=True)  # diffusers' pipeline takes it
    pipe = SanaPipeline(tokenizer=tokenizer, scheduler=scheduler, **parts)
    pipe.save_pretrained(folder)
    del pipe, parts
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# -- one case -------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cap(device: torch.device, cap: int | None) -> None:
    if device.type == "cuda":
        from sana.device import limit_process_memory

        limit_process_memory(device, cap if cap is not None else torch.cuda.get_device_properties(0).total_memory)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(device: torch.device, run, repeats: int) -> tuple[float, object, float | None, float | None]:
    """Warm-up once, then the median of `repeats` timed runs; peaks over the timed runs."""
    run()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type != "cuda":
        return statistics.median(times), result, None, None
    return (statistics.median(times), result, torch.cuda.max_memory_allocated(device) / GiB,
            torch.cuda.max_memory_reserved(device) / GiB)


def run_ours(folder: Path, label: str, plan, device: torch.device, cap: int | None, px: int, steps: int,
             repeats: int) -> Row:
    from sana.device import DTYPES
    from sana.pipelines.image import ImagePipeline, ImageRequest

    row = Row(label, plan=plan.label().removeprefix("--memory "), tiles=plan.tile_description(),
              predicted_gib=plan.peak_bytes / GiB)
    pipe = None
    try:
        _cap(device, cap)
        start = time.perf_counter()
        pipe = ImagePipeline.from_pretrained(folder, dtype=DTYPES[plan.dtype], device=device, plan=plan)
        row.load_seconds = time.perf_counter() - start
        request = ImageRequest(prompt=PROMPT, seeds=[0], width=px, height=px, steps=steps, guidance=4.5,
                               sampler="flow-dpm", flow_shift=3.0)
        notices = []
        from sana.pipelines.common import Events

        events = Events(on_notice=notices.append)
        row.seconds, result, row.peak_gib, row.reserved_gib = _timed(device, lambda: pipe.generate(request, events),
                                                                     repeats)
        row.phases = {k: round(v, 2) for k, v in result.timings.items()}
        if result.memory.get("fallbacks"):
            row.note = "fell back: " + result.memory["fallbacks"]
            row.plan = pipe.plan.label().removeprefix("--memory ")
            row.tiles = pipe.plan.tile_description()
    except Exception as exc:  # a failed case is a row, not the end of the run
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        traceback.print_exc()
    finally:
        del pipe
        _free(device)
        _cap(device, None)
    return row


def run_diffusers(folder: Path, label: str, device: torch.device, cap: int | None, px: int, steps: int,
                  repeats: int, *, offload: bool) -> Row:
    from diffusers import SanaPipeline

    row = Row(label, plan="enable_model_cpu_offload + vae.enable_tiling" if offload else "all on the GPU",
              tiles="diffusers default (512 px)" if offload else "whole image")
    pipe = None
    try:
        _cap(device, cap)
        start = time.perf_counter()
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        pipe = SanaPipeline.from_pretrained(folder, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if offload:
            pipe.enable_model_cpu_offload(device=device)
            pipe.vae.enable_tiling()
        else:
            pipe.to(device)
        row.load_seconds = time.perf_counter() - start

        def generate():
            return pipe(PROMPT, num_inference_steps=steps, guidance_scale=4.5, width=px, height=px,
                        generator=torch.Generator("cpu").manual_seed(0), use_resolution_binning=False)

        row.seconds, _, row.peak_gib, row.reserved_gib = _timed(device, generate, repeats)
    except Exception as exc:
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        traceback.print_exc()
    finally:
        del pipe
        _free(device)
        _cap(device, None)
    return row


def run_decode(folder: Path, label: str, plan, device: torch.device, px: int, repeats: int, *,
               diffusers: bool = False) -> Row:
    """The DC-AE decode of one random latent with the tiles `plan` chose: our decoder (what `sana gen` runs), or
    diffusers' AutoencoderDC with the same tiles."""
    from sana.components import load_vae
    from sana.device import DTYPES
    from sana.placement import decode_tiling

    row = Row(label, plan=plan.label().removeprefix("--memory "), tiles=plan.tile_description())
    vae = None
    try:
        dtype = DTYPES[plan.dtype]
        tile = decode_tiling(plan, px, px)
        if diffusers:
            from diffusers import AutoencoderDC

            vae = AutoencoderDC.from_pretrained(folder / "vae", torch_dtype=dtype).to(device).eval()
            scale = vae.spatial_compression_ratio
            if tile is not None:
                vae.enable_tiling(tile_sample_min_height=tile.height * scale, tile_sample_min_width=tile.width * scale,
                                  tile_sample_stride_height=tile.stride_height * scale,
                                  tile_sample_stride_width=tile.stride_width * scale)

            def decode(z):
                return vae.decode(z).sample
        else:
            vae = load_vae(folder, dtype=dtype, device=device)
            scale = vae.spatial_compression_ratio

            def decode(z):
                return vae.decode(z, tile=tile)
        latents = torch.randn(1, vae.config.latent_channels, px // scale, px // scale, device=device, dtype=dtype)
        with torch.no_grad():
            row.seconds, _, row.peak_gib, row.reserved_gib = _timed(device, lambda: decode(latents), repeats)
        row.predicted_gib = (plan.activations("decode") + plan.weights("vae")) / GiB
    except Exception as exc:
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        traceback.print_exc()
    finally:
        del vae
        _free(device)
    return row


# -- plans ----------------------------------------------------------------------------------------------

def plans_for_caps(folder: Path, device: torch.device, px: int, caps_gib: list[float], *,
                   tiny: bool) -> list[tuple[str, int | None, object]]:
    """(label, cap bytes, plan) for every cap and uncapped. With --tiny, each cap runs the tier (and text-encoder
    place) the real 1.6B model gets under that cap, on the tiny model on the CPU."""
    from sana.registry import get_spec

    sizes = sizes_from_directory(folder)
    work = Workload(px, px, images=1, rows=2)
    caps = [(f"{c:g} GiB cap", int(c * GiB)) for c in caps_gib] + [("uncapped", None)]
    if not tiny:
        _free(device)
        return [(label, cap, plan_memory(probe_device(device), sizes, work, max_vram=cap)) for label, cap in caps]
    real_sizes = sizes_from_spec(get_spec("sana-1.6b-4k"))
    big = DeviceInfo(kind="cuda", name="described H100", total_memory=80 * GiB, free_memory=79 * GiB,
                     ram_total=128 * GiB, ram_available=120 * GiB, compute_capability=(9, 0), kernels=True)
    out = []
    for label, cap in caps:
        real = plan_memory(big, real_sizes, Workload(4096, 4096), max_vram=cap)
        plan = plan_memory(big, sizes, work, mode=real.tier, dtype="fp32")
        if real.text_encoder_on_cpu:
            plan = replace(plan.lower("encode"), fallbacks=())
        if real.decode_tile is not None:  # tiled like the real plan (2 x 2 tiles at this size)
            plan = replace(plan, decode_tile=px // 2 + 8)
        out.append((label, cap, plan))
    return out


# -- report ---------------------------------------------------------------------------------------------

def quiet_libraries() -> None:
    """Progress bars and deprecation chatter from diffusers / transformers would bury the report."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], decode_rows: list[Row], *, title: str, px: int, steps: int, dtype: str) -> str:
    lines = [f"## {title}", "",
             f"`python scripts/bench_memory.py`: {px} px, {steps} steps, CFG 4.5, batch 1, {dtype}, random weights at "
             f"{'tiny' if px < 1024 else 'the real'} configs; median of the timed runs after one warm-up; peak = "
             "torch.cuda.max_memory_allocated (reserved in brackets: what the cap limits).", "",
             "| case | plan | VAE decode | predicted GiB | peak GiB | s / image | encode / denoise / decode s | load s "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phases = " / ".join(_num(r.phases.get(k)) for k in ("encode", "denoise", "decode")) if r.phases else "-"
        peak = f"{_num(r.peak_gib)} ({_num(r.reserved_gib)})" if r.peak_gib is not None else "-"
        lines.append(f"| {r.case} | {r.plan} | {r.tiles} | {_num(r.predicted_gib)} | {peak} | {_num(r.seconds)} | "
                     f"{phases} | {_num(r.load_seconds, 1)} | {r.note} |")
    lines += ["", f"DC-AE decode alone, {px} px, the tiles each plan chose:", "",
              "| plan for | tiles | predicted GiB | peak GiB | ms | note |", "|---|---|---|---|---|---|"]
    for r in decode_rows:
        peak = f"{_num(r.peak_gib)} ({_num(r.reserved_gib)})" if r.peak_gib is not None else "-"
        ms = "-" if r.seconds is None else f"{r.seconds * 1000:.0f}"
        lines.append(f"| {r.case} | {r.tiles} | {_num(r.predicted_gib)} | {peak} | {ms} | {r.note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the script's paths)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case after the warm-up")
    parser.add_argument("--caps", type=float, nargs="*", default=list(CAPS_GIB), help="caps in GiB (default: %(default)s)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip diffusers' SanaPipeline")
    parser.add_argument("--markdown", type=Path, help="append the section to this file")
    args = parser.parse_args()

    if not args.tiny and not torch.cuda.is_available():
        print("bench_memory.py needs a CUDA GPU (or --tiny for the CPU check)", file=sys.stderr)
        return 2
    quiet_libraries()
    device = torch.device("cpu" if args.tiny else "cuda")
    px = 64 if args.tiny else 4096
    steps = 2 if args.tiny else args.steps
    card = "CPU (--tiny)" if args.tiny else torch.cuda.get_device_name()
    title = f"Memory plans at {px} px under caps ({card}, torch {torch.__version__}, {datetime.date.today()})"

    with tempfile.TemporaryDirectory(prefix="sana-bench-memory-") as tmp:
        folder = Path(tmp) / "sana-1.6b-4k-random"
        start = time.perf_counter()
        build_model(folder, tiny=args.tiny, device=device.type)
        print(f"built the random model folder in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

        rows, decode_rows = [], []
        cases = plans_for_caps(folder, device, px, args.caps, tiny=args.tiny)
        for label, cap, plan in cases:
            print(f"ours, {label}: {plan.headline()}", file=sys.stderr, flush=True)
            rows.append(run_ours(folder, f"ours, {label}", plan, device, cap, px, steps, args.repeats))
        if not args.no_diffusers:
            for label, cap, offload in ((f"{DIFFUSERS_CAP_GIB} GiB cap", DIFFUSERS_CAP_GIB * GiB, True),
                                        ("uncapped", None, False)):
                print(f"diffusers, {label}", file=sys.stderr, flush=True)
                rows.append(run_diffusers(folder, f"diffusers, {label}", device, cap if not args.tiny else None,
                                          px, steps, args.repeats, offload=offload))
        for label, cap, plan in cases:
            decode_rows.append(run_decode(folder, f"ours, {label}", plan, device, px, max(args.repeats, 2)))
            if not args.no_diffusers:
                decode_rows.append(run_decode(folder, f"diffusers, {label}", plan, device, px, max(args.repeats, 2),
                                              diffusers=True))

    text = markdown(rows, decode_rows, title=title, px=px, steps=steps, dtype=cases[0][2].dtype)
    print(text)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0 if all(not r.note.startswith(("OutOfMemoryError", "SanaError", "RuntimeError")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
