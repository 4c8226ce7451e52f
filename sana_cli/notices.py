"""Notices a generating command gives about its inputs before it runs: prompts outside the nano model's grammar or
longer than the text encoder's window, sizes far above the model's, PyTorch's CUDA build on a machine without a GPU.
Each says what it found and runs on: none of them is an error."""

from __future__ import annotations

import os
from pathlib import Path

from . import console


def note_outside_nano_grammar(spec, prompts: list[str]) -> None:
    """The nano model was trained on the shapes grammar alone: a prompt outside it gets a notice naming the rule
    it breaks (it still runs; the picture is then anyone's guess)."""
    if spec is None or spec.name != "nano":
        return
    from sana.errors import SanaError
    from sana.nano.shapes import parse_caption

    for prompt in dict.fromkeys(prompts):
        try:
            parse_caption(prompt)
        except SanaError as exc:
            console.notice(f"the nano model knows only the shapes grammar, and {exc}; see `sana shapes make --help`")


def note_cuda_build_without_gpu(device) -> None:
    """Once a machine: PyTorch's CUDA build running on the CPU is several GB that the CPU build would save."""
    import torch

    if device.type != "cpu" or torch.version.cuda is None or torch.cuda.is_available():
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    marker = cache / "sana" / "notices" / "cpu-build"
    if marker.exists():
        return
    console.notice("this PyTorch is the CUDA build and there is no GPU; PyTorch's CPU build is a fraction of its "
                   "size: pip install torch --index-url https://download.pytorch.org/whl/cpu "
                   "(with pipx: pipx runpip sana-cli install ...)")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass


def note_cut_prompts(text_encoder, prompts: list[str]) -> None:
    """A notice for each prompt longer than the text encoder's window (its end is cut, as diffusers cuts it)."""
    tokenizer, window = getattr(text_encoder, "tokenizer", None), getattr(text_encoder, "max_length", None)
    if tokenizer is None or not window:
        return
    limit = window - 2  # BOS, and the one position the instruction's template takes
    for prompt in dict.fromkeys(prompts):
        count = len(tokenizer.encode(prompt, add_special_tokens=False))
        if count > limit:
            start = prompt if len(prompt) <= 40 else prompt[:37] + "..."
            console.notice(f"prompt \"{start}\" has {count} tokens; the text encoder reads {limit}, the rest is cut")


def note_large_sizes(sizes: list[tuple[int, int]], native: int) -> None:
    """A notice for a size far above the model's native one (more than 4x its pixels): layouts break there."""
    for width, height in dict.fromkeys(sizes):
        if width * height > 4 * native * native:
            console.notice(f"{width}x{height} is far above the {native} px this model was trained at: expect "
                           "repeated subjects; a 2K or 4K model (sana models list) is made for large sizes")


def note_unused_negative(requests) -> None:
    """A negative prompt steers only through classifier-free guidance: at a scale <= 1 nothing uses it."""
    if any(r.negative_prompt and r.guidance <= 1.0 for r in requests):
        console.notice("the negative prompt has no effect without guidance (a scale <= 1 turns CFG off); it is "
                       "recorded as given")
