"""The clip jobs of `/v1/videos`: each job's state as OpenAI's `Video` object, and its MP4 in the server's own
temporary folder (made for the first clip, removed at shutdown: a server that fails to start leaves none).
Bounded: past `max_items` jobs, the oldest finished ones are forgotten and their files deleted."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .schemas import VideoError, VideoObject

ID_RE = re.compile(r"video_[A-Za-z0-9_-]{16,64}")
# Share of the progress bar before the denoising steps (encoding), and the steps' share.
STEPS_START, STEPS_SHARE = 5, 90


@dataclass
class VideoJob:
    id: str
    model: str
    prompt: str
    width: int
    height: int
    frames: int
    fps: float
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    error: VideoError | None = None
    path: Path | None = None  # the MP4, once written
    started: float | None = None
    seconds_taken: float | None = None
    job: object = None  # the scheduler's Job, while it waits or runs

    def watch(self, event: dict) -> None:
        """The worker's events for this job (phases and steps) as status and progress."""
        if event.get("status") == "running":
            if self.status == "queued":
                self.status, self.started = "in_progress", time.monotonic()
            if event.get("total"):
                self.progress = max(self.progress, STEPS_START + STEPS_SHARE * event["step"] // event["total"])

    def finish(self, path: Path | None, error: Exception | None) -> None:
        self.completed_at = int(time.time())
        self.seconds_taken = None if self.started is None else round(time.monotonic() - self.started, 3)
        self.job = None
        if error is None:
            self.status, self.progress, self.path = "completed", 100, path
        else:
            code = "cancelled" if type(error).__name__ in ("Interrupted", "ClientGone") else "generation_failed"
            self.status, self.error = "failed", VideoError(code=code, message=str(error)[:500])

    def to_object(self, base_url: str) -> VideoObject:
        done = self.status == "completed"
        return VideoObject(
            id=self.id, model=self.model, status=self.status, progress=self.progress, created_at=self.created_at,
            completed_at=self.completed_at, error=self.error, prompt=self.prompt,
            seconds=f"{self.frames / self.fps:.3g}", size=f"{self.width}x{self.height}", num_frames=self.frames,
            fps=self.fps, url=f"{base_url}/v1/videos/{self.id}/content" if done else None,
            inference_time_s=self.seconds_taken if done else None,
        )


class VideoStore:
    def __init__(self, *, max_items: int = 256, folder: Path | None = None):
        self.max_items = max_items
        self._folder = Path(folder) if folder else None
        self._jobs: OrderedDict[str, VideoJob] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="sana-serve-videos-"))
            return self._folder

    def create(self, *, model: str, prompt: str, width: int, height: int, frames: int, fps: float) -> VideoJob:
        video = VideoJob(id="video_" + secrets.token_urlsafe(18), model=model, prompt=prompt, width=width,
                         height=height, frames=frames, fps=fps)
        with self._lock:
            self._jobs[video.id] = video
            finished = [v for v in self._jobs.values() if v.status in ("completed", "failed")]
            while len(self._jobs) > self.max_items and finished:
                self._forget(finished.pop(0).id)
        return video

    def path_for(self, video: VideoJob) -> Path:
        return self.folder / f"{video.id}.mp4"

    def get(self, video_id: str) -> VideoJob | None:
        if not ID_RE.fullmatch(video_id):
            return None
        with self._lock:
            return self._jobs.get(video_id)

    def list(self, *, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        """Jobs oldest first (order "asc") or newest first ("desc"), from the one after `after`; and whether more
        follow."""
        with self._lock:
            jobs = list(self._jobs.values())
        if order == "desc":
            jobs.reverse()
        if after is not None:
            ids = [v.id for v in jobs]
            jobs = jobs[ids.index(after) + 1:] if after in ids else []
        return jobs[:limit], len(jobs) > limit

    def delete(self, video_id: str) -> VideoJob | None:
        with self._lock:
            if video_id not in self._jobs:
                return None
            return self._forget(video_id)

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _forget(self, video_id: str) -> VideoJob:
        video = self._jobs.pop(video_id)
        for leftover in self._folder.glob(f"{video_id}.*") if self._folder is not None else ():
            leftover.unlink(missing_ok=True)
        return video
