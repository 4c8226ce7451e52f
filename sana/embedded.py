"""Models that ship inside the package, found without the hub: the nano shapes model and its video sibling.

The nano model (`sana/nano/model/`, a diffusers-format directory of ~13.5 MB) is what `sana gen` runs when no
SANA weights are downloaded, so the whole product works offline; the nano video model (`sana/nano/video_model/`,
~18 MB, from `scripts/train_nano_video.sh`) is the same for `sana video`. `SANA_NANO_MODEL` /
`SANA_NANO_VIDEO_MODEL` point at another directory (a retrained one) without reinstalling.
"""

from __future__ import annotations

import os
from pathlib import Path

NANO_ENV = "SANA_NANO_MODEL"
NANO_VIDEO_ENV = "SANA_NANO_VIDEO_MODEL"
PACKAGED_NANO = Path(__file__).resolve().parent / "nano" / "model"
PACKAGED_NANO_VIDEO = Path(__file__).resolve().parent / "nano" / "video_model"
# embedded name -> (the environment variable that overrides its folder, the folder in the package)
EMBEDDED = {"nano": (NANO_ENV, PACKAGED_NANO), "nano-video": (NANO_VIDEO_ENV, PACKAGED_NANO_VIDEO)}


def embedded_model_dir(name: str) -> Path | None:
    """The directory of embedded model `name` (a preset's "embedded" key), or None when it is not installed."""
    if name not in EMBEDDED:
        return None
    env, packaged = EMBEDDED[name]
    override = os.environ.get(env)
    path = Path(override).expanduser() if override else packaged
    return path.resolve() if (path / "model_index.json").is_file() else None


def embedded_env(name: str) -> str:
    """The environment variable that points embedded model `name` at another folder."""
    return EMBEDDED.get(name, (NANO_ENV, None))[0]


def embedded_name(spec) -> str | None:
    """The embedded model a preset stands for, or None for hub models."""
    return spec.extra.get("embedded") if spec is not None else None
