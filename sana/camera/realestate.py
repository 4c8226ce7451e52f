"""RealEstate10K / CameraCtrl pose files (`cameras.txt`).

The first line is the source video's URL. Every other line holds 19 numbers:
`timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3` with fx, cx divided by the image
width and fy, cy by its height, two unused (distortion) slots, and a row-major 3x4 world-to-camera matrix in OpenCV
camera axes. Timestamps are microseconds of the source video; the poses are placed at those times, so a clip
sampled every few video frames plays back at its real speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from .path import SourcePath, check_intrinsics_values, check_rigid, rigid_inverse

FIELDS = 19
LAYOUT = "timestamp_us fx fy cx cy 0 0 and a row-major 3x4 world-to-camera matrix"


def read_realestate(path: Path, data: bytes, image_size: tuple[int, int]) -> SourcePath:
    """Camera-to-world poses (the inverse of each line's matrix), times, and intrinsics in image pixels."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not text; expected a RealEstate10K pose file ({LAYOUT})") from None
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if not rows and number == 1 and not _all_numbers(fields):
            continue  # the URL line
        if len(fields) != FIELDS or not _all_numbers(fields):
            shown = f"{len(fields)} fields" if len(fields) != FIELDS else "a field that is not a number"
            raise UsageError(f"{path} line {number}: {shown}; expected {FIELDS} numbers: {LAYOUT}")
        row = [float(field) for field in fields]
        if not np.all(np.isfinite(row)):
            raise UsageError(f"{path} line {number}: holds NaN or infinite values; expected finite numbers")
        rows.append(row)
        lines.append(number)
    if not rows:
        raise UsageError(f"{path}: no pose lines; expected a URL line, then lines of {FIELDS} numbers: {LAYOUT}")
    table = np.array(rows)

    def name(i: int) -> str:
        return f"{path} line {lines[i]}"

    w2c = np.zeros((len(table), 4, 4))
    w2c[:, :3, :] = table[:, 7:].reshape(-1, 3, 4)
    w2c[:, 3, 3] = 1.0
    check_rigid(w2c, name)
    for i, row in enumerate(table):
        check_intrinsics_values(row[1:5], f"{name(i)} intrinsics")
    times = (table[:, 0] - table[0, 0]) / 1e6
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        raise UsageError(f"{name(int(bad[0]) + 1)}: timestamp {int(table[bad[0] + 1, 0])} us does not follow "
                         f"{int(table[bad[0], 0])} us; expected increasing timestamps")
    width, height = image_size
    intrinsics = table[:, 1:5] * np.array([width, height, width, height])
    return SourcePath(c2w=rigid_inverse(w2c), times=times, intrinsics=intrinsics, interpolation="linear")


def _all_numbers(fields: list[str]) -> bool:
    try:
        [float(field) for field in fields]
    except ValueError:
        return False
    return True
