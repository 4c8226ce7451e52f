"""DiT forward benchmarks at the real SANA configs (random weights): our engine against diffusers, eager and
compiled, measured in one process on one GPU.

Used by `sana bench`; nothing here prints: rows go back to the caller.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import SanaError

BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def dit_flops(cfg: dict, tokens: int, text_tokens: int, batch: int) -> float:
    """Matmul FLOPs (2 x MACs) of one DiT forward; the same count for every implementation."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    dc = cfg["num_cross_attention_heads"] * cfg["cross_attention_head_dim"]
    hidden = int(cfg["mlp_ratio"] * d)
    hd = cfg["attention_head_dim"]
    per_token = (
        4 * d * d  # qkv + out projection
        + 4 * cfg["num_attention_heads"] * hd * hd  # K^T V and q (K^T V)
        + 2 * d * dc  # cross-attention q + out
        + 2 * text_tokens * dc  # cross-attention scores and values
        + 3 * d * hidden + 18 * hidden  # Mix-FFN 1x1 convs and the depthwise 3x3
    )
    text = text_tokens * (cfg["caption_channels"] * d + d * d + cfg["num_layers"] * 2 * d * dc)
    return 2.0 * batch * (tokens * per_token * cfg["num_layers"] + text)


def bf16_peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def random_dit_pair(name: str):
    """diffusers' SanaTransformer2DModel at a registry model's config with random weights, and our DiT loaded
    from it through the real loader; both bf16 on the GPU."""
    from diffusers import SanaTransformer2DModel

    from ..loading import load_transformer
    from ..registry import get_spec

    cfg = {k: v for k, v in get_spec(name).transformer.items() if not k.startswith("_")}
    torch.manual_seed(0)
    ref = SanaTransformer2DModel(**cfg).to("cuda", torch.bfloat16).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(Path(tmp) / "transformer")
        ours = load_transformer(Path(tmp), dtype=torch.bfloat16, device="cuda")
    return ref, ours


STEP = "ours, step (text once)"  # a denoising step as `sana gen` runs it
STEP_TEXT_KERNEL = "ours, step, text attention kernel"  # the same with the (opt-in) cross-attention kernel
# The step with a prompt of ordinary length, its rows trimmed after the last real token (rounded up to 64) as the
# pipelines trim them, not all 300 (diffusers' forward costs the same with either mask).
STEP_PROMPT = "ours, step, 120-token prompt"
REAL_TEXT_TOKENS = 120  # of the 300: a prompt of ordinary length leaves the rest padding


@dataclass
class DitRow:
    model: str
    px: int
    batch: int
    tflop: float
    ms: dict[str, float] = field(default_factory=dict)  # implementation -> median ms
    first_call_s: dict[str, float] = field(default_factory=dict)  # implementation -> seconds of the first call
    fp8_error: float | None = None  # ||fp8 - bf16|| / ||bf16|| of our outputs, when fp8 was measured

    def best_bf16(self) -> float:
        """Our fastest bf16 forward, the same work as diffusers' (fp8 and the step with the text's keys and values
        made once are reported beside it, not as it)."""
        return min(v for k, v in self.ms.items()
                   if k.startswith("ours") and "fp8" not in k and k not in (STEP, STEP_TEXT_KERNEL, STEP_PROMPT))


MIN_RUNS = 10  # timed calls a median is taken over, however long one call takes


def _median_ms(fn: Callable[[], object]) -> float:
    """Median ms of `fn` over at least MIN_RUNS calls (triton's do_bench times as many calls as fit its `rep`
    budget: 500 ms alone would give a 1 s video forward one call, and a 180 ms 4096 px forward two)."""
    import triton.testing

    with torch.no_grad():
        _first_call(fn)  # a first call may still compile or capture: the second one is the estimate
        estimate = _first_call(fn) * 1000.0
        rep = min(60_000.0, max(500.0, MIN_RUNS * estimate))
        return triton.testing.do_bench(fn, warmup=100, rep=rep, return_mode="median")


def interleaved_ms(forwards: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """Median ms of each forward, timed in turn for `rounds` rounds (A B A B ...), each round's value a median of
    `_median_ms`: a GPU's clock drift over minutes (~2% seen on an H200) then weighs on both sides of a ratio
    alike instead of on whichever was timed later."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(rounds):
        for name, fn in forwards.items():
            times[name].append(_median_ms(fn))
    return {name: float(sorted(values)[len(values) // 2]) for name, values in times.items()}


def _first_call(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_dit(name: str, sizes: list[int], *, batch: int, compiled: bool, fp8: bool = True,
              on_row: Callable[[DitRow], None] | None = None) -> list[DitRow]:
    """Time one registry model's DiT at each size: diffusers eager (and torch.compile), ours (PyTorch ops,
    Triton kernels, kernels + CUDA graph, and with `fp8` on a GPU that has fp8 GEMMs: fp8 block linears +
    CUDA graph, with the relative error that costs against our bf16 output)."""
    import copy

    from .. import ops
    from ..graphs import GraphedForward
    from ..models.fp8 import quantize_blocks_fp8
    from ..registry import get_spec
    from ..text import PromptEmbeddings

    if not torch.cuda.is_available():
        raise SanaError("sana bench needs a CUDA GPU")
    spec = get_spec(name)
    if not spec.is_image:
        raise SanaError(f"{name} is a {spec.family} model", "sana bench measures the image DiTs")
    cfg = {k: v for k, v in spec.transformer.items() if not k.startswith("_")}
    ref, ours = random_dit_pair(name)
    compiled_ref = torch.compile(ref) if compiled else None
    quantized = None
    if fp8 and ops.fp8_supported(torch.device("cuda")):
        quantized = copy.deepcopy(ours)
        quantize_blocks_fp8(quantized)
    rows = []
    for px in sizes:
        side = px // 32
        x = torch.randn(batch, 32, side, side, device="cuda", dtype=torch.bfloat16)
        text = torch.randn(batch, 300, 2304, device="cuda", dtype=torch.bfloat16)
        mask = torch.ones(batch, 300, device="cuda", dtype=torch.long)
        t = torch.full((batch,), 500.0, device="cuda")
        g = torch.full((batch,), 0.45, device="cuda", dtype=torch.bfloat16) if cfg.get("guidance_embeds") else None
        row = DitRow(name, px, batch, dit_flops(cfg, side * side, 300, batch) / 1e12)

        def diffusers_forward(model=ref):
            return model(x, encoder_hidden_states=text, timestep=t, guidance=g, encoder_attention_mask=mask,
                         return_dict=False)

        row.ms["diffusers"] = _median_ms(diffusers_forward)
        if compiled_ref is not None:
            row.first_call_s["diffusers+compile"] = _first_call(lambda: diffusers_forward(compiled_ref))
            row.ms["diffusers+compile"] = _median_ms(lambda: diffusers_forward(compiled_ref))
        ops.set_kernels_enabled(False)
        row.ms["ours, torch ops"] = _median_ms(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        ops.set_kernels_enabled(True)
        row.first_call_s["ours, kernels"] = _first_call(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        row.ms["ours, kernels"] = _median_ms(lambda: ours(x, text, t, text_mask=mask, guidance=g))
        graphed = GraphedForward(ours)
        row.first_call_s["ours, kernels+graph"] = _first_call(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
        row.ms["ours, kernels+graph"] = _median_ms(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
        # A denoising step as `sana gen` runs it: the text's keys and values made once per image, not per step.
        with torch.no_grad():
            context = ours.text_context(text, mask)
        row.ms[STEP] = _median_ms(lambda: graphed(x, context, t, guidance=g))
        prompt_mask = torch.zeros_like(mask)
        prompt_mask[:, :REAL_TEXT_TOKENS] = 1
        rows_of_prompt = PromptEmbeddings(text, prompt_mask).trimmed()  # as the pipelines trim a prompt's rows
        with torch.no_grad():
            prompt_context = ours.text_context(rows_of_prompt.embeds, rows_of_prompt.mask)
        row.ms[STEP_PROMPT] = _median_ms(lambda: graphed(x, prompt_context, t, guidance=g))
        graphed.reset()
        ops.set_text_attention_kernel(True)
        try:
            row.ms[STEP_TEXT_KERNEL] = _median_ms(lambda: graphed(x, context, t, guidance=g))
        finally:
            ops.set_text_attention_kernel(False)
            graphed.reset()
        if quantized is not None:
            graphed = GraphedForward(quantized)
            row.first_call_s["ours, fp8+graph"] = _first_call(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
            row.ms["ours, fp8+graph"] = _median_ms(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
            graphed.reset()
            with torch.no_grad():
                exact = ours(x, text, t, text_mask=mask, guidance=g).float()
                approx = quantized(x, text, t, text_mask=mask, guidance=g).float()
            row.fp8_error = ((approx - exact).norm() / exact.norm()).item()
        rows.append(row)
        if on_row:
            on_row(row)
        torch.cuda.empty_cache()
    return rows


# The released components' configs (shared/reference): DC-AE f32c32 and the Gemma-2-2B decoder.
DCAE_F32C32 = dict(
    attention_head_dim=32, decoder_act_fns="silu", decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3, decoder_layers_per_block=(3,) * 6,
    decoder_norm_types="rms_norm", decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    downsample_block_type="Conv", encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3, encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), in_channels=3, latent_channels=32,
    scaling_factor=0.41407, upsample_block_type="interpolate",
)
GEMMA2_2B = dict(
    hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    intermediate_size=9216, vocab_size=256000, max_position_embeddings=8192, rms_norm_eps=1e-6,
    rope_theta=10000.0, sliding_window=4096, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=2,
    eos_token_id=1,
)


@dataclass
class GenerateRow:
    px: int
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)  # implementation -> median seconds per image
    phases: dict[str, float] = field(default_factory=dict)  # ours: encode / denoise / decode seconds
    fp8_psnr: float | None = None  # dB between our fp8 and bf16 images (same seed), when fp8 was measured


def bench_generate(sizes: list[int], *, steps: int = 20, repeats: int = 3, fp8: bool = True,
                   on_row: Callable[[GenerateRow], None] | None = None) -> list[GenerateRow]:
    """Prompt to decoded image after load, 1.6B at its real size with Gemma-2-2B and DC-AE (random weights,
    bf16, CFG 4.5): ours against diffusers' SanaPipeline on the same weights, and with `fp8` (on a GPU that has
    fp8 GEMMs) ours with fp8 block linears and the PSNR of its image against ours in bf16. Each side runs the
    modules it loads: diffusers transformers' Gemma2Model and its AutoencoderDC, ours our Gemma-2 encoder (whose
    layers replay from CUDA graphs where the memory plan allows, as in `sana gen`) and our decoder, built from
    those modules' weights. The 4K decode is untiled here."""
    import copy
    import statistics

    import numpy as np

    from .. import ops
    from ..models.fp8 import quantize_blocks_fp8

    from diffusers import AutoencoderDC, SanaPipeline
    from transformers import Gemma2Config, Gemma2Model

    from ..loading import vae_decoder_from_state
    from ..loading.gemma2 import gemma2_from_state
    from ..models.gemma2 import Gemma2Config as OurGemma2Config
    from ..pipelines.image import ImagePipeline, ImageRequest
    from ..sampling import make_scheduler
    from ..text import COMPLEX_HUMAN_INSTRUCTION, TextEncoder
    from ..tokenizer import train_gemma_style_bpe

    if not torch.cuda.is_available():
        raise SanaError("sana bench needs a CUDA GPU")
    dtype = torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_gemma_style_bpe(["\n".join(COMPLEX_HUMAN_INSTRUCTION), "a photo of a cat"], Path(tmp) / "tok")
    text_model = Gemma2Model(Gemma2Config(**GEMMA2_2B)).to("cuda", dtype).eval()
    vae = AutoencoderDC(**DCAE_F32C32).to("cuda", dtype).eval()
    decoder = vae_decoder_from_state(dict(vae.config), vae.state_dict(), device="cuda")  # ours, same weights
    our_config = OurGemma2Config.from_dict(text_model.config.to_dict())
    our_text_model = gemma2_from_state(our_config, text_model.state_dict(), device="cuda")
    scheduler = make_scheduler("flow-dpm", flow_shift=3.0, reference=True)  # diffusers' pipeline takes it

    def pipelines(px: int):
        """diffusers' and our pipeline around the same modules, with the 1.6B DiT trained for `px`."""
        name = {2048: "sana-1.6b-2k", 4096: "sana-1.6b-4k"}.get(px, "sana-1.6b")
        ref, ours = random_dit_pair(name)
        theirs = SanaPipeline(tokenizer=tokenizer, text_encoder=text_model, vae=vae, transformer=ref,
                              scheduler=scheduler)
        theirs.set_progress_bar_config(disable=True)
        def ours_with(transformer):
            text_encoder = TextEncoder(tokenizer, our_text_model)
            return ImagePipeline(transformer=transformer, text_encoder=text_encoder, vae=decoder,
                                 family="sana", scheduler_config=dict(scheduler.config), device="cuda", dtype=dtype)

        mine = {"ours": ours_with(ours)}
        if fp8 and ops.fp8_supported(torch.device("cuda")):
            quantized = copy.deepcopy(ours)
            quantize_blocks_fp8(quantized)
            mine["ours, fp8"] = ours_with(quantized)
        return theirs, mine

    prompt = "a photo of a cat sleeping on a sunny windowsill"
    rows = []
    for px in sizes:
        diffusers_pipe, ours = pipelines(px)
        row = GenerateRow(px, steps)
        request = ImageRequest(prompt=prompt, seeds=[0], width=px, height=px, steps=steps, guidance=4.5,
                               sampler="flow-dpm", flow_shift=3.0)

        def run_diffusers():
            diffusers_pipe(prompt, num_inference_steps=steps, guidance_scale=4.5, width=px, height=px,
                           generator=torch.Generator("cpu").manual_seed(0))

        images = {}
        runs = [("diffusers", run_diffusers)] + [(name, lambda p=p: p.generate(request)) for name, p in ours.items()]
        for name, fn in runs:
            fn()  # warm-up: compiles kernels, captures graphs, fills allocator caches
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                start = time.perf_counter()
                result = fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                if name.startswith("ours"):
                    images[name] = np.asarray(result.images[0], dtype=np.float64)
                if name == "ours":
                    row.phases = dict(result.timings)
            row.seconds[name] = statistics.median(times)
        if "ours, fp8" in images:
            mse = float(((images["ours, fp8"] - images["ours"]) ** 2).mean())
            row.fp8_psnr = float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))
        del ours
        rows.append(row)
        if on_row:
            on_row(row)
        torch.cuda.empty_cache()
    return rows
