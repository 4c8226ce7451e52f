"""Our Gemma-2 encoder and tokenizer against transformers' `Gemma2Model` and `AutoTokenizer`, and a `sana gen`
that imports no transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sana.embedded import embedded_model_dir
from sana.errors import SanaError
from sana.loading.gemma2 import gemma2_from_state, load_gemma2
from sana.models.gemma2 import Gemma2Config, Gemma2Encoder
from sana.text import COMPLEX_HUMAN_INSTRUCTION, TextEncoder
from sana.tokenizer import GemmaTokenizer, NotNative, load_tokenizer
from tests.tiny_transformer import noise_all_parameters

NANO = embedded_model_dir("nano")
needs_nano = pytest.mark.skipif(NANO is None, reason="no nano model in this installation")

# Widths all different; a window of 4 under 16 positions, so sliding layers see less than full ones.
CONFIGS = {
    "softcap-gqa": dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=20, sliding_window=4,
                        query_pre_attn_scalar=24, attn_logit_softcapping=2.0),
    "no-cap-bias-layer-types": dict(vocab_size=97, hidden_size=42, intermediate_size=72, num_hidden_layers=3,
                                    num_attention_heads=3, num_key_value_heads=1, head_dim=12, sliding_window=3,
                                    query_pre_attn_scalar=12, attn_logit_softcapping=None, attention_bias=True,
                                    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                    layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
}


def reference(name: str, seed: int = 0):
    from transformers import Gemma2Config as HFConfig
    from transformers import Gemma2Model

    model = Gemma2Model(HFConfig(pad_token_id=0, **CONFIGS[name])).eval()
    noise_all_parameters(model, seed, scale=0.3)
    return model


def inputs(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [3, 16] with right padding: a full row, one of 11 tokens, one of 2."""
    ids = torch.randint(1, vocab, (3, 16), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 2:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


# -- the model -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_hidden_states_match_transformers(name):
    ref = reference(name)
    ours = gemma2_from_state(Gemma2Config.from_dict(ref.config.to_dict()), ref.state_dict())
    ids, mask = inputs(ref.config.vocab_size)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask)[0]
        got = ours(ids, attention_mask=mask)
        unmasked, got_unmasked = ref(ids)[0], ours(ids)  # no mask: causal only
    assert got.shape == expected.shape == (3, 16, ref.config.hidden_size)
    assert relative_error(got, expected) <= 1e-5
    assert relative_error(got_unmasked, unmasked) <= 1e-5


def test_the_sliding_window_and_the_cap_change_the_result():
    """The parity above would hold for a port that ignored them if they did not matter at these sizes."""
    ref = reference("softcap-gqa")
    config = Gemma2Config.from_dict(ref.config.to_dict())
    ids, mask = inputs(ref.config.vocab_size)
    outputs = []
    for changes in ({}, {"sliding_window": None}, {"attn_logit_softcapping": None}):
        data = {**ref.config.to_dict(), **changes}
        model = gemma2_from_state(Gemma2Config.from_dict(data), ref.state_dict())
        with torch.no_grad():
            outputs.append(model(ids, attention_mask=mask))
    assert config.layer_types == ("sliding_attention", "full_attention") * 2
    assert relative_error(outputs[1], outputs[0]) > 1e-3
    assert relative_error(outputs[2], outputs[0]) > 1e-3


def test_loads_a_saved_gemma2_model_sharded_and_in_its_variant(tmp_path):
    ref = reference("softcap-gqa")
    ref.save_pretrained(tmp_path / "plain")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids, mask = inputs(ref.config.vocab_size)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask)[0]
        for folder in ("plain", "sharded"):
            model = load_gemma2(tmp_path / folder)
            assert isinstance(model, Gemma2Encoder) and not model.load_report.unexpected
            assert relative_error(model(ids, attention_mask=mask), expected) <= 1e-5
        other = reference("softcap-gqa", seed=5)
        other.save_pretrained(tmp_path / "plain", variant="bf16")  # model.bf16.safetensors beside the default
        chosen = load_gemma2(tmp_path / "plain", variant="bf16", dtype=torch.bfloat16)
        assert chosen.load_report.files == ["model.bf16.safetensors"] and chosen.norm.weight.dtype == torch.bfloat16
        torch.testing.assert_close(chosen.norm.weight, other.norm.weight.to(torch.bfloat16))


def test_loads_a_causal_lm_checkpoint_with_its_model_prefix(tmp_path):
    """SANA-WM stores `Gemma2ForCausalLM`: the decoder's tensors under `model.`, maybe an LM head."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import Gemma2ForCausalLM

    ref = reference("softcap-gqa")
    causal = Gemma2ForCausalLM(ref.config)
    causal.model.load_state_dict(ref.state_dict())
    causal.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert all(k.startswith(("model.", "lm_head.")) for k in state)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # an untied save carries the head too
    save_file(state, str(tmp_path / "model.safetensors"))
    model = load_gemma2(tmp_path)
    assert model.load_report.ignored == ["lm_head.weight"] and not model.load_report.unexpected
    ids, mask = inputs(ref.config.vocab_size)
    with torch.no_grad():
        assert relative_error(model(ids, attention_mask=mask), ref(ids, attention_mask=mask)[0]) <= 1e-5


@pytest.mark.parametrize("change, words", [
    ({"model_type": "llama"}, "not 'gemma2'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "RoPE type 'linear'"),
    ({"hidden_activation": "silu"}, "gelu_pytorch_tanh"),
], ids=["llama", "rope-scaling", "activation"])
def test_other_configs_are_refused_in_one_line(tmp_path, change, words):
    reference("softcap-gqa").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(SanaError) as info:
        load_gemma2(tmp_path)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_missing_and_misshapen_weights_are_one_line(tmp_path):
    ref = reference("softcap-gqa")
    config = Gemma2Config.from_dict(ref.config.to_dict())
    state = dict(ref.state_dict())
    del state["norm.weight"]
    with pytest.raises(SanaError, match="lacks 1 weight"):
        gemma2_from_state(config, state)
    state = dict(ref.state_dict(), **{"norm.weight": torch.zeros(7)})
    with pytest.raises(SanaError, match="norm.weight"):
        gemma2_from_state(config, state)


# -- the tokenizer ---------------------------------------------------------------------------------------

PROMPTS = [
    "a large red circle on a white background",
    "",
    "   ",
    "A Large RED circle, on the LEFT; then a small blue square at the bottom!",
    "\n".join(COMPLEX_HUMAN_INSTRUCTION) + "a small green triangle on a black background",
    "a red circle " * 80,  # longer than any window below: cut
    "héllo wörld ☃ 日本 <bos> <pad> <0x41> tabs\tand\n\nnewlines  two spaces",
]


def assert_same_tokens(ours, theirs, max_length: int):
    theirs.padding_side = ours.padding_side = "right"
    a = theirs(PROMPTS, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
               return_tensors="pt")
    b = ours(PROMPTS, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
             return_tensors="pt")
    assert torch.equal(b.input_ids, a.input_ids) and torch.equal(b.attention_mask, a.attention_mask)
    for prompt in PROMPTS:
        assert ours.encode(prompt) == theirs.encode(prompt)
        assert ours.encode(prompt, add_special_tokens=False) == theirs.encode(prompt, add_special_tokens=False)
    assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id, len(ours)) == (
        theirs.pad_token_id, theirs.bos_token_id, theirs.eos_token_id, len(theirs))


@needs_nano
@pytest.mark.parametrize("max_length", [6, 40, 300])
def test_tokenizer_matches_auto_tokenizer(max_length):
    from transformers import AutoTokenizer

    folder = NANO / "tokenizer"
    assert_same_tokens(GemmaTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder), max_length)


POST_PROCESSORS = {  # what tokenizer.json's post-processor adds around a text
    "bos": (["<bos>"], []),
    "bos-eos": (["<bos>"], ["<eos>"]),
    "none": None,
}


@needs_nano
@pytest.mark.parametrize("post", list(POST_PROCESSORS))
def test_tokenizer_configs_of_the_released_layout(tmp_path, post):
    """The hub repos' layout (transformers 4): `add_bos_token` / `add_eos_token` and the added tokens listed in
    tokenizer_config.json, the special tokens in special_tokens_map.json as well. Beside a tokenizer.json,
    transformers 5 ignores the flags and adds what the file's post-processor adds (nothing without one)."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    backend = Tokenizer.from_file(str(NANO / "tokenizer" / "tokenizer.json"))
    before, after = POST_PROCESSORS[post] or ([], [])
    ids = {t: backend.token_to_id(t) for t in before + after}
    template = " ".join([f"{t}:0" for t in before] + ["$A:0"] + [f"{t}:0" for t in after])
    backend.post_processor = processors.TemplateProcessing(
        single=template, pair=template + " $B:1", special_tokens=list(ids.items())) if POST_PROCESSORS[post] else None
    backend.save(str(tmp_path / "tokenizer.json"))
    added = json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"]
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "padding_side": "left", **specials,
              "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(specials))
    ours, theirs = GemmaTokenizer.from_folder(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    text = ours.encode("a red circle", add_special_tokens=False)
    assert ours.encode("a red circle") == [ids[t] for t in before] + text + [ids[t] for t in after]
    assert_same_tokens(ours, theirs, 40)


@needs_nano
def test_other_tokenizers_are_left_to_transformers(tmp_path):
    shutil.copytree(NANO / "tokenizer", tmp_path / "generic")
    config = json.loads((tmp_path / "generic" / "tokenizer_config.json").read_text())
    (tmp_path / "generic" / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(NotNative):
        GemmaTokenizer.from_folder(tmp_path / "generic")
    assert type(load_tokenizer(tmp_path / "generic")).__module__.startswith("transformers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotNative):
        GemmaTokenizer.from_folder(tmp_path / "empty")


# -- wiring --------------------------------------------------------------------------------------------------

@needs_nano
def test_text_encoder_uses_ours_and_encodes_as_transformers_did():
    from transformers import AutoModel, AutoTokenizer

    ours = TextEncoder.from_pretrained(NANO, dtype=torch.float32)
    assert isinstance(ours.tokenizer, GemmaTokenizer) and isinstance(ours.model, Gemma2Encoder)
    theirs = TextEncoder(AutoTokenizer.from_pretrained(NANO / "tokenizer"),
                         AutoModel.from_pretrained(NANO / "text_encoder", dtype=torch.float32).eval())
    items = [("a large red circle on a white background", True), ("", False), ("a blue square " * 60, True)]
    a, b = ours.encode_many(items), theirs.encode_many(items)
    torch.testing.assert_close(a.mask, b.mask)
    torch.testing.assert_close(a.embeds, b.embeds, rtol=1e-5, atol=1e-5)


@needs_nano
def test_gen_imports_no_transformers_diffusers_or_dynamo(tmp_path):
    """A fresh `sana gen` on the nano model runs without transformers or diffusers (our text encoder, tokenizer and
    samplers), and without torch._dynamo (about 2 s of imports; the DiT built on the meta device draws nothing)."""
    script = (
        "import json, sys\n"
        "from sana_cli.app import main\n"
        f"sys.argv = ['sana', 'gen', 'a large red circle on a white background', '-o', {str(tmp_path / 'x.png')!r},"
        " '--steps', '2', '--model', 'nano', '--device', 'cpu', '--seed', '0']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(json.dumps({name: name in sys.modules for name in ('transformers', 'diffusers', 'torch._dynamo')}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.png").is_file()
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not any(imported.values()), imported
