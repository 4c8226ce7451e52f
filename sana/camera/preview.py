"""A picture of a resolved camera path (PIL only), to check what the camera will do before any model loads.

Two orthographic views of the path in the first camera's frame (OpenCV: +x right, +y down, +z forward):
a top view (x across, z up the page: the ground plane seen from above) and a side view (z across, -y up the
page: forward distance against height). Camera centres are joined by a line coloured by time; a frustum is drawn
every N frames (its image-top edge thicker, so roll shows), the start is a circle and the end a square.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .path import CameraPath

# viridis at five stops: dark purple (start) to yellow (end)
TIME_COLOURS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=float)
BACKGROUND, INK, GRID, FAINT = (255, 255, 255), (30, 30, 30), (228, 228, 228), (120, 120, 120)
HEADER, FOOTER, MARGIN = 64, 70, 56


def default_every(num_frames: int) -> int:
    """Frustum spacing: once a second (16 frames) up to 321 frames, then about 20 frustums in all."""
    return 16 * max(1, math.ceil(num_frames / 321))


def time_colour(fraction: float) -> tuple[int, int, int]:
    """The colour of a point `fraction` (0..1) of the way through the clip."""
    position = min(max(fraction, 0.0), 1.0) * (len(TIME_COLOURS) - 1)
    i = min(int(position), len(TIME_COLOURS) - 2)
    mixed = TIME_COLOURS[i] + (position - i) * (TIME_COLOURS[i + 1] - TIME_COLOURS[i])
    return tuple(int(round(v)) for v in mixed)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def frustum_corners(path: CameraPath, frame: int, depth: float) -> np.ndarray:
    """World points [5, 3]: the camera centre, then the image corners (top-left, top-right, bottom-right,
    bottom-left) pushed out to `depth` along the view direction."""
    fx, fy, cx, cy = path.intrinsics[frame]
    width, height = path.image_size
    pixels = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    rays = np.column_stack([(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy, np.ones(4)]) * depth
    pose = path.c2w[frame]
    return np.vstack([pose[:3, 3], rays @ pose[:3, :3].T + pose[:3, 3]])


def _nice_step(span: float, target: int = 6) -> float:
    """1, 2 or 5 times a power of ten, giving about `target` ticks over span."""
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


class _Panel:
    """One orthographic view: world (a, b) coordinates to pixels with equal scale on both axes."""

    def __init__(self, box: tuple[int, int, int, int], points: np.ndarray):
        self.box = box
        lo, hi = points.min(axis=0), points.max(axis=0)
        span = max(float((hi - lo).max()), 1e-6) * 1.1
        centre = (lo + hi) / 2
        left, top, right, bottom = box
        self.scale = min(right - left, bottom - top) / span
        self.origin = np.array([(left + right) / 2, (top + bottom) / 2])
        self.centre = centre

    def px(self, ab: np.ndarray) -> list[tuple[float, float]]:
        """Pixels of world points [N, 2] (a to the right, b up the page)."""
        offset = (np.atleast_2d(ab) - self.centre) * self.scale
        return [(float(x), float(y)) for x, y in self.origin + offset * np.array([1.0, -1.0])]

    def world_range(self) -> tuple[np.ndarray, np.ndarray]:
        left, top, right, bottom = self.box
        lo = self.centre + (np.array([left, bottom]) - self.origin) * np.array([1.0, -1.0]) / self.scale
        hi = self.centre + (np.array([right, top]) - self.origin) * np.array([1.0, -1.0]) / self.scale
        return lo, hi


def _draw_panel(draw: ImageDraw.ImageDraw, panel: _Panel, title: str, labels: tuple[str, str],
                project, path: CameraPath, frustums: list[np.ndarray], frames: list[int]) -> None:
    font, small = _font(15), _font(12)
    left, top, right, bottom = panel.box
    lo, hi = panel.world_range()
    step = _nice_step(float(max(hi - lo)))
    for axis in (0, 1):  # grid lines with their values
        for value in np.arange(math.ceil(lo[axis] / step) * step, hi[axis], step):
            a = np.array([value, lo[1]]) if axis == 0 else np.array([lo[0], value])
            b = np.array([value, hi[1]]) if axis == 0 else np.array([hi[0], value])
            (x0, y0), (x1, y1) = panel.px(np.vstack([a, b]))
            draw.line([(x0, y0), (x1, y1)], fill=GRID, width=1)
            text = f"{value:.6g}" if abs(value) > step * 1e-6 else "0"
            if axis == 0:
                draw.text((x0, bottom + 4), text, fill=FAINT, font=small, anchor="mt")
            else:
                draw.text((left - 4, y0), text, fill=FAINT, font=small, anchor="rm")
    draw.rectangle(panel.box, outline=FAINT, width=1)
    draw.text(((left + right) / 2, top - 22), title, fill=INK, font=font, anchor="ms")
    draw.text(((left + right) / 2, bottom + 22), labels[0], fill=INK, font=small, anchor="mt")
    draw.text((left - 40, (top + bottom) / 2), labels[1], fill=INK, font=small, anchor="mm")

    last = max(path.num_frames - 1, 1)
    centres = panel.px(project(path.positions))
    for i in range(len(centres) - 1):  # the path, coloured by time
        draw.line([centres[i], centres[i + 1]], fill=time_colour(i / last), width=3)
    for frame, corners in zip(frames, frustums):
        colour = time_colour(frame / last)
        c, tl, tr, br, bl = panel.px(project(corners))
        for corner in (tl, tr, br, bl):
            draw.line([c, corner], fill=colour, width=1)
        draw.line([tr, br, bl, tl], fill=colour, width=1)
        draw.line([tl, tr], fill=colour, width=3)  # the image's top edge
    (sx, sy), (ex, ey) = centres[0], centres[-1]
    draw.ellipse([sx - 7, sy - 7, sx + 7, sy + 7], fill=time_colour(0.0), outline=INK, width=2)
    draw.rectangle([ex - 6, ey - 6, ex + 6, ey + 6], fill=time_colour(1.0), outline=INK, width=2)


def draw_preview(path: CameraPath, every: int | None = None, size: tuple[int, int] = (1280, 720)) -> Image.Image:
    """The preview image: top view (x-z) and side view (z, height = -y), frustums every `every` frames."""
    every = every or default_every(path.num_frames)
    frames = sorted(set(range(0, path.num_frames, every)) | {path.num_frames - 1})
    extent = float(np.ptp(path.positions, axis=0).max()) if path.num_frames > 1 else 0.0
    depth = 0.12 * extent if extent > 1e-9 else 1.0  # frustums scale with the path (a unit for pure rotations)
    frustums = [frustum_corners(path, frame, depth) for frame in frames]
    everything = np.vstack([path.positions, *frustums])

    def top(points: np.ndarray) -> np.ndarray:
        return points[:, [0, 2]]

    def side(points: np.ndarray) -> np.ndarray:
        return np.column_stack([points[:, 2], -points[:, 1]])

    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    panel_w = (width - 3 * MARGIN - 20) // 2
    boxes = [(MARGIN + 20, HEADER + 30, MARGIN + 20 + panel_w, height - FOOTER - 40),
             (2 * MARGIN + 40 + panel_w, HEADER + 30, width - MARGIN + 20, height - FOOTER - 40)]
    views = [("Top view (from above)", ("x: right", "z: forward"), top),
             ("Side view (from the right)", ("z: forward", "-y: up"), side)]
    for box, (title, labels, project) in zip(boxes, views):
        _draw_panel(draw, _Panel(box, project(everything)), title, labels, project, path, frustums, frames)

    draw.text((MARGIN, 18), "Camera path (first camera at the origin, OpenCV axes)", fill=INK, font=_font(18))
    draw.text((MARGIN, 42), path.describe(), fill=FAINT, font=_font(12))
    _draw_legend(draw, path, every, (MARGIN, height - FOOTER + 12, width - MARGIN, height - 16))
    return image


def _draw_legend(draw: ImageDraw.ImageDraw, path: CameraPath, every: int, box: tuple[int, int, int, int]) -> None:
    """Start and end markers, the time colour bar and the frustum spacing."""
    font = _font(13)
    left, top, right, bottom = box
    y = top + 10
    draw.ellipse([left, y - 7, left + 14, y + 7], fill=time_colour(0.0), outline=INK, width=2)
    draw.text((left + 20, y), "start (frame 0, 0.00 s)", fill=INK, font=font, anchor="lm")
    end_x = left + 210
    draw.rectangle([end_x, y - 6, end_x + 12, y + 6], fill=time_colour(1.0), outline=INK, width=2)
    draw.text((end_x + 20, y), f"end (frame {path.num_frames - 1}, {(path.num_frames - 1) / path.fps:.2f} s)",
              fill=INK, font=font, anchor="lm")
    bar_left, bar_right = left + 470, right - 200
    for x in range(bar_left, bar_right):
        draw.line([(x, y - 6), (x, y + 6)], fill=time_colour((x - bar_left) / max(bar_right - bar_left - 1, 1)))
    draw.text((bar_left, y + 10), "0 s", fill=FAINT, font=font, anchor="lt")
    draw.text((bar_right, y + 10), f"{(path.num_frames - 1) / path.fps:.2f} s", fill=FAINT, font=font, anchor="rt")
    draw.text(((bar_left + bar_right) / 2, y + 10), "time", fill=FAINT, font=font, anchor="mt")
    draw.text((right, y), f"frustum every {every} frames", fill=INK, font=font, anchor="rm")


def save_preview(path: CameraPath, dest: str | Path, every: int | None = None) -> Path:
    """Write the preview as a PNG at dest (its folder made if missing), atomically: a partial file never appears
    under the final name. Returns its path."""
    import os

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        draw_preview(path, every).save(tmp, format="PNG")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
