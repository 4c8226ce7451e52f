"""Models that ship inside the package, found without the hub: today the nano shapes model.

The nano model (`sana/nano/model/`, a diffusers-format directory of ~13.5 MB) is what `sana gen` runs when no
SANA weights are downloaded, so the whole product works offline. `SANA_NANO_MODEL` points at another nano
directory (a retrained one) without reinstalling.
"""

from __future__ import annotations

import os
from pathlib import Path

NANO_ENV = "SANA_NANO_MODEL"
PACKAGED_NANO = Path(__file__).resolve().parent / "nano" / "model"


def embedded_model_dir(name: str) -> Path | None:
    """The directory of embedded model `name` (a preset's "embedded" key), or None when it is not installed."""
    if name != "nano":
        return None
    override = os.environ.get(NANO_ENV)
    path = Path(override).expanduser() if override else PACKAGED_NANO
    return path.resolve() if (path / "model_index.json").is_file() else None


def embedded_name(spec) -> str | None:
    """The embedded model a preset stands for, or None for hub models."""
    return spec.extra.get("embedded") if spec is not None else None
