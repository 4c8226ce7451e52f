"""Input declarations the nodes share, their defaults read from the registry's presets (not a table of our own),
and the seeds a batch draws."""

from __future__ import annotations

from functools import lru_cache

MAX_SEED = 0xFFFFFFFF  # seeds are 32-bit, as `sana gen --seed` takes them
SIZE_STEP = 32  # sides are multiples of 32 (`sana gen` snaps to them)

# The preset each kind of node takes its widget defaults from.
IMAGE_PRESET, SPRINT_PRESET, VIDEO_PRESET, WORLD_PRESET = "sana1.5-1.6b", "sprint-1.6b", "video-2b-480p", "wm-2.6b"


@lru_cache(maxsize=None)
def preset(name: str) -> dict:
    """A registry preset's sampling defaults, with its native side as "resolution"."""
    from sana.registry import get_spec

    spec = get_spec(name)
    return {"resolution": spec.resolution, **spec.defaults}


def seed() -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Noise seed; the batch draws seed, seed + 1, ... (as `sana gen --num`)."})


def side(default: int, what: str) -> tuple:
    return ("INT", {"default": default, "min": SIZE_STEP, "max": 16384, "step": SIZE_STEP,
                    "tooltip": f"Output {what} in px; generated at the nearest trained aspect ratio, then resized."})


def steps(default: int, low: int = 1, high: int = 200, tooltip: str = "Denoising steps.") -> tuple:
    return ("INT", {"default": default, "min": low, "max": high, "tooltip": tooltip})


def model_steps(default: int) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": 200, "tooltip": "Denoising steps; 0: the model's default."})


def model_guidance() -> tuple:
    return ("FLOAT", {"default": -1.0, "min": -1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Classifier-free guidance scale (1 or less: off); -1: the model's default."})


def model_side(what: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": 16384, "step": SIZE_STEP,
                    "tooltip": f"Output {what} in px; 0: the model's native size. Generated at the nearest trained "
                               "aspect ratio, then resized."})


def guidance(default: float, tooltip: str = "Classifier-free guidance scale (1 or less: off).") -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip": tooltip})


def shift() -> tuple:
    return ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Flow shift of the sampler's schedule; 0: the model's own."})


def prompt(default: str = "", tooltip: str = "What to draw.") -> tuple:
    return ("STRING", {"default": default, "multiline": True, "tooltip": tooltip})


def negative() -> tuple:
    return ("STRING", {"default": "", "multiline": True, "tooltip": "What to steer away from (with guidance > 1)."})


def batch_size() -> tuple:
    return ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images in one batch (one forward)."})


def seeds(first: int, count: int) -> list[int]:
    return [(first + i) & MAX_SEED for i in range(count)]


def snapped(width: int, height: int) -> tuple[int, int]:
    """Sides rounded to multiples of 32, as `sana gen` snaps them."""
    return max(SIZE_STEP, round(width / SIZE_STEP) * SIZE_STEP), max(SIZE_STEP, round(height / SIZE_STEP) * SIZE_STEP)
