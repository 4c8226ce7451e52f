"""Loading a DiT with fp8 block linears (`sana.loading.fp8`): quantized linear by linear on the device from a load
to host memory, the same bits as a load onto the device then `quantize_blocks_fp8`; and the CLI's hint where --fp8
would keep the transformer resident. The staging runs on the CPU against the meta device; GPU tests measure the
load's device peak."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from sana.loading import load_transformer
from sana.loading.fp8 import load_fp8
from sana.models.fp8 import BLOCK_LINEARS, Fp8Linear, quantize_blocks_fp8
from tests.tiny_transformer import build_reference, noise_all_parameters, transformer_config


def fp8_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, fp8 ones as bytes (`torch.equal` compares bits then)."""
    return {name: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t
            for name, t in [*model.named_parameters(), *model.named_buffers()]}


def assert_same_bits(got: torch.nn.Module, expected: torch.nn.Module) -> None:
    got, expected = fp8_tensors(got), fp8_tensors(expected)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name].cpu(), expected[name].cpu()), name


def replaced_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The bf16 block linears `quantize_blocks_fp8` replaces (those it names, both sides multiples of 16)."""
    found = []
    for block in model.blocks:
        for parent, name in getattr(block, "FP8_LINEARS", BLOCK_LINEARS):
            linear = getattr(getattr(block, parent) if parent else block, name, None)
            if isinstance(linear, torch.nn.Linear) and not linear.in_features % 16 and not linear.out_features % 16:
                found.append(linear)
    return found


@pytest.fixture
def model_dir(tmp_path):
    build_reference("sana1.5", tmp_path / "transformer")
    return tmp_path


# -- quantizing on a device ---------------------------------------------------------------------------------

def test_quantizing_on_a_device_gives_the_bits_of_quantizing_in_place(model_dir):
    model = load_transformer(model_dir, dtype=torch.bfloat16)
    in_place, on_device = copy.deepcopy(model), copy.deepcopy(model)
    old = [weakref.ref(linear) for linear in replaced_linears(on_device)]
    assert quantize_blocks_fp8(in_place) == quantize_blocks_fp8(on_device, device="cpu") == len(old) > 0
    gc.collect()
    assert all(ref() is None for ref in old)  # the bf16 linears are gone, not kept beside their fp8 forms
    assert [type(m) for m in on_device.modules()] == [type(m) for m in in_place.modules()]
    assert on_device.fp8 and isinstance(on_device.blocks[0].attn.qkv, Fp8Linear)
    assert_same_bits(on_device, in_place)


def test_quantizing_on_a_device_leaves_the_rest_of_the_model_where_it_is(model_dir):
    model = load_transformer(model_dir, dtype=torch.bfloat16)
    quantize_blocks_fp8(model, device="meta")
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        where = {t.device.type for t in tensors}
        assert where <= ({"meta"} if isinstance(module, Fp8Linear) else {"cpu"}), (module, where)


# -- load_fp8 -------------------------------------------------------------------------------------------------

def recording_loader(model_dir, asked: list):
    """`load(where)` for `load_fp8`, noting each place it is asked to load to."""
    def load(where):
        asked.append(where)
        return load_transformer(model_dir, dtype=torch.bfloat16, device=where)
    return load


def test_load_fp8_reads_to_the_host_and_ends_on_the_device(model_dir):
    """A device other than the CPU (meta here, a GPU in use): the load goes to the host, the model to the device."""
    asked = []
    model = load_fp8(recording_loader(model_dir, asked), "meta")
    assert asked == ["cpu"]
    assert model.fp8 and len(replaced_linears(model)) == 0
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert model.load_report.files  # the loader's report survives the move


def test_load_fp8_on_the_cpu_loads_and_quantizes_there(model_dir):
    asked = []
    model = load_fp8(recording_loader(model_dir, asked), "cpu")
    expected = load_transformer(model_dir, dtype=torch.bfloat16)
    quantize_blocks_fp8(expected)
    assert asked == ["cpu"]
    assert_same_bits(model, expected)


def test_the_image_pipeline_loads_its_dit_through_load_fp8(tmp_path, monkeypatch):
    """--fp8 with the DiT kept on the device: the pipeline hands its loader and device to `load_fp8`, whose
    staging the tests above check; the result is the fp8 model a load then a quantization gives."""
    from sana.loading import fp8 as loading_fp8
    from sana.pipelines.image import ImagePipeline
    from tests.tiny_pipeline import build_pipeline

    build_pipeline(tmp_path, "sana")
    calls = []
    real = loading_fp8.load_fp8

    def spy(load, device):
        calls.append(str(device))
        return real(load, device)

    monkeypatch.setattr(loading_fp8, "load_fp8", spy)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cpu", fp8=True)
    expected = load_transformer(tmp_path, dtype=torch.bfloat16)
    quantize_blocks_fp8(expected)
    assert calls == ["cpu"]
    assert_same_bits(pipe.transformer, expected)
    plain = ImagePipeline.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cpu")
    assert calls == ["cpu"] and not getattr(plain.transformer, "fp8", False)


# -- on a GPU: the bits, LoRAs, and the load's device peak ----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("with_lora", [False, True], ids=["plain", "lora"])
def test_gpu_staged_load_gives_the_bits_of_loading_then_quantizing(with_lora, model_dir, tmp_path):
    loras = []
    if with_lora:
        from tests.test_lora import save_lora

        loras = [(save_lora(build_reference("sana1.5"), tmp_path / "lora"), 0.7)]

    def load(where):
        return load_transformer(model_dir, dtype=torch.bfloat16, device=where, loras=loras)

    staged = load_fp8(load, "cuda")
    expected = load("cuda")
    quantize_blocks_fp8(expected)
    assert {t.device.type for t in [*staged.parameters(), *staged.buffers()]} == {"cuda"}
    assert_same_bits(staged, expected)


@pytest.mark.gpu
def test_gpu_image_pipeline_reads_its_dit_to_the_host_and_quantizes_it_on_the_gpu(tmp_path, monkeypatch):
    import sana.loading
    from sana.pipelines.image import ImagePipeline
    from tests.tiny_pipeline import build_pipeline

    build_pipeline(tmp_path, "sana1.5")
    asked = []
    real = sana.loading.load_transformer

    def spy(*args, device, **kwargs):
        asked.append(str(device))
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(sana.loading, "load_transformer", spy)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda", fp8=True)
    assert asked == ["cpu"]
    transformer = pipe.transformer
    assert {t.device.type for t in [*transformer.parameters(), *transformer.buffers()]} == {"cuda"}
    expected = real(tmp_path, dtype=torch.bfloat16, device="cuda")
    quantize_blocks_fp8(expected)
    assert_same_bits(transformer, expected)


def wide_config(layers: int = 24) -> dict:
    """A DiT whose block linears dominate its bytes, all multiples of 16 (so all are quantized but the text's k/v)."""
    return {**transformer_config("sana1.5"), "num_attention_heads": 8, "attention_head_dim": 32,
            "num_cross_attention_heads": 8, "cross_attention_head_dim": 32, "cross_attention_dim": 256,
            "caption_channels": 64, "num_layers": layers}


@pytest.mark.gpu
def test_gpu_fp8_load_peak_stays_below_the_bf16_model(tmp_path):
    from diffusers import SanaTransformer2DModel

    ref = SanaTransformer2DModel(**wide_config()).eval()
    noise_all_parameters(ref, 1)
    ref.save_pretrained(tmp_path / "transformer")
    del ref

    def load(where):
        return load_transformer(tmp_path, dtype=torch.bfloat16, device=where)

    def peak_of(loading) -> tuple[torch.nn.Module, int]:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        model = loading()
        torch.cuda.synchronize()
        return model, torch.cuda.max_memory_allocated() - start

    staged, staged_peak = peak_of(lambda: load_fp8(load, "cuda"))
    fp8_bytes = sum(t.numel() * t.element_size() for t in [*staged.parameters(), *staged.buffers()])
    del staged

    def load_then_quantize():
        model = load("cuda")
        quantize_blocks_fp8(model)
        return model

    model, direct_peak = peak_of(load_then_quantize)
    del model
    bf16_bytes = sum(t.numel() * t.element_size() for t in load("cpu").parameters())
    print(f"bf16 {bf16_bytes / 2**20:.1f} MiB, fp8 {fp8_bytes / 2**20:.1f} MiB; load peak: staged "
          f"{staged_peak / 2**20:.1f} MiB, load then quantize {direct_peak / 2**20:.1f} MiB")
    assert direct_peak >= bf16_bytes  # the old way: the whole bf16 model on the device first
    assert fp8_bytes <= staged_peak < bf16_bytes
    assert fp8_bytes < 0.65 * bf16_bytes


# -- the hint: --fp8 would keep the transformer resident ------------------------------------------------------

def described_gpu(gb: float, cc=(8, 9)):
    from sana.device import GiB, DeviceInfo

    total = int(gb * GiB)
    return DeviceInfo(kind="cuda", name=f"described {gb} GB card", total_memory=total,
                      free_memory=int(total * 0.95), ram_total=64 * GiB, ram_available=48 * GiB,
                      compute_capability=cc, kernels=True)


@pytest.fixture(scope="module")
def plans_48b():
    """bf16 and fp8 plans of SANA-1.5 4.8B at 1024 px on described cards, by card size."""
    from sana.memory import Workload, plan_memory, sizes_from_spec, with_fp8_blocks
    from sana.registry import get_spec

    spec = get_spec("sana1.5-4.8b")
    bf16 = sizes_from_spec(spec)
    fp8 = with_fp8_blocks(bf16, spec.transformer)
    work = Workload(1024, 1024, images=1, rows=2)

    def plans(gb: float, cc=(8, 9)):
        device = described_gpu(gb, cc)
        return plan_memory(device, bf16, work), lambda: plan_memory(device, fp8, work)

    return plans


def test_fp8_is_suggested_where_it_keeps_the_transformer_resident(plans_48b):
    from sana_cli.gen import suggests_fp8

    plan, fp8_plan = plans_48b(16)  # bf16: offloaded; fp8: resident
    assert plan.home("transformer") == "host" and fp8_plan().home("transformer") == "device"
    assert suggests_fp8(plan, fp8_plan, fp8=False, supported=True)
    assert not suggests_fp8(plan, fp8_plan, fp8=True, supported=True)  # asked for already
    assert not suggests_fp8(plan, fp8_plan, fp8=False, supported=False)  # no fp8 GEMMs on this GPU


def test_fp8_is_not_suggested_where_it_would_not_keep_the_transformer_resident(plans_48b):
    from sana_cli.gen import suggests_fp8

    def never():
        raise AssertionError("the fp8 plan is made only when the answer hangs on it")

    plan, fp8_plan = plans_48b(8)  # both offload (fp8: no longer streamed, still not resident)
    assert not suggests_fp8(plan, fp8_plan, fp8=False, supported=True)
    plan, _ = plans_48b(80)  # resident in bf16 already
    assert plan.home("transformer") == "device" and not suggests_fp8(plan, never, fp8=False, supported=True)
    plan, _ = plans_48b(16, cc=(7, 5))  # fp16 activations: --fp8 runs with bf16 only
    assert plan.dtype == "fp16" and not suggests_fp8(plan, never, fp8=False, supported=True)


def test_the_hint_is_one_notice_and_changes_nothing(plans_48b, monkeypatch):
    import sana.ops
    from sana.memory import Workload, plan_memory
    from sana.registry import get_spec
    from sana_cli import console, gen

    notices = []
    monkeypatch.setattr(console, "notice", notices.append)
    monkeypatch.setattr(sana.ops, "fp8_supported", lambda device: True)
    plan, _ = plans_48b(16)

    def replan(sizes):
        return plan_memory(plan.device, sizes, Workload(1024, 1024, images=1, rows=2))

    gen.note_fp8_would_fit(plan, torch.device("cpu"), get_spec("sana1.5-4.8b").transformer, replan, fp8=False)
    assert len(notices) == 1 and "--fp8 would keep the transformer on the GPU" in notices[0]
    assert "offloading" in notices[0] and "~3%" in notices[0]
    gen.note_fp8_would_fit(plan, torch.device("cpu"), get_spec("sana1.5-4.8b").transformer, replan, fp8=True)
    assert len(notices) == 1
