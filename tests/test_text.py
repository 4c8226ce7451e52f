"""Prompt encoding matches diffusers' SanaPipeline.encode_prompt at every real token."""

import inspect

import pytest
import torch

from sana.text import COMPLEX_HUMAN_INSTRUCTION, TextEncoder
from tests.tiny_pipeline import build_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sana")
    return build_pipeline(path, "sana"), path


def test_instruction_is_diffusers_default():
    from diffusers import SanaPipeline

    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    assert tuple(default) == COMPLEX_HUMAN_INSTRUCTION


@pytest.mark.parametrize("prompts", [["A Red Circle on the left  "], ["a cat", "An ASTRONAUT riding a horse, 日本"]],
                         ids=["one", "two-mixed"])
def test_matches_diffusers_encode_prompt(tiny, prompts):
    pipe, path = tiny
    ours = TextEncoder.from_pretrained(path, dtype=torch.float32)
    ref_embeds, ref_mask, ref_neg, ref_neg_mask = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=True, negative_prompt="blurry, Low quality", device="cpu",
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION),
    )
    cond = ours.encode(prompts)
    neg = ours.encode(["blurry, Low quality"] * len(prompts), with_instruction=False)
    assert cond.embeds.shape == ref_embeds.shape == (len(prompts), 300, ref_embeds.shape[-1])
    _assert_same_tokens(cond, ref_embeds, ref_mask)
    _assert_same_tokens(neg, ref_neg, ref_neg_mask)


def _assert_same_tokens(ours, ref_embeds, ref_mask):
    """Equal masks, the same states at every real token (to fp32 rounding: a forward over fewer padded positions sums
    in another order, ~1e-6), zeros where diffusers leaves the states of padding (which cross-attention masks out)."""
    torch.testing.assert_close(ours.mask, ref_mask)
    real = ref_mask.bool()
    torch.testing.assert_close(ours.embeds[real], ref_embeds[real], rtol=1e-5, atol=1e-5)
    assert not ours.embeds[~real].any()


def test_prompt_and_negative_share_one_forward_over_real_tokens(tiny):
    """The pipeline's rows (negative without the instruction, prompt with it) come from one batched forward whose
    width is the longest real sequence, not the 300 (+ instruction) padded positions, with diffusers' values."""
    pipe, path = tiny
    enc = TextEncoder.from_pretrained(path, dtype=torch.float32)
    shapes = []
    original = enc.model.forward
    enc.model.forward = lambda *a, **k: (shapes.append(tuple(a[0].shape)), original(*a, **k))[1]
    out = enc.encode_many([("", False), ("A Red Circle", True), ("A Red Circle", True)])
    assert len(shapes) == 1 and shapes[0][0] == 2 and shapes[0][1] < 300
    ref_embeds, ref_mask, ref_neg, ref_neg_mask = pipe.encode_prompt(
        "A Red Circle", do_classifier_free_guidance=True, negative_prompt="", device="cpu",
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION),
    )
    _assert_same_tokens(out.index([0]), ref_neg, ref_neg_mask)
    _assert_same_tokens(out.index([1]), ref_embeds, ref_mask)
    torch.testing.assert_close(out.embeds[1], out.embeds[2])


def test_repeated_prompts_are_encoded_once(tiny):
    _, path = tiny
    enc = TextEncoder.from_pretrained(path, dtype=torch.float32)
    calls = []
    original = enc.model.forward
    enc.model.forward = lambda *a, **k: (calls.append(a[0].shape[0]), original(*a, **k))[1]
    out = enc.encode(["same", "same", "other", "same"])
    assert calls == [2]
    torch.testing.assert_close(out.embeds[0], out.embeds[3])
    assert not torch.equal(out.embeds[0], out.embeds[2])


def test_trimming_drops_only_columns_padded_in_every_row():
    from sana.text import PromptEmbeddings

    embeds = torch.randn(3, 300, 8)
    mask = torch.zeros(3, 300, dtype=torch.long)
    mask[0, :20], mask[1, :70], mask[2, 0] = 1, 1, 1
    trimmed = PromptEmbeddings(embeds, mask).trimmed(multiple=64)
    assert trimmed.embeds.shape == (3, 128, 8) and trimmed.mask.shape == (3, 128)
    assert torch.equal(trimmed.embeds, embeds[:, :128]) and int(trimmed.mask.sum()) == int(mask.sum())
    mask[1, 299] = 1  # a token at the very end keeps every column
    assert PromptEmbeddings(embeds, mask).trimmed().embeds.shape[1] == 300
