"""`/v1/videos` as SGLang serves it (OpenAI's Videos API): asynchronous clip jobs.

- `POST /v1/videos`: JSON or a multipart form (the first frame as the file `input_reference`); answered at once
  with the job (`status: "queued"`), or a 4xx error for what cannot be served, 429 when the queue is full;
- `GET /v1/videos/{id}`: the job (status, progress 0-100, error);
- `GET /v1/videos?after&limit&order`: the jobs, newest first by default;
- `DELETE /v1/videos/{id}`: forgets the job and its file; a waiting job is dropped, a running one stops at its next
  step;
- `GET /v1/videos/{id}/content`: the MP4 (`?variant=camera`: a world clip's camera file).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError

from .clips import build_clip_job
from .forms import parse_body
from .scheduler import QueueFull
from .schemas import ApiError, VideoDeleted, VideoGenerationRequest, VideoList, VideoObject


def add_video_routes(app: FastAPI, state) -> None:
    from .app import check_workers, queue_full, validation_error

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def find(video_id: str):
        video = state.videos.get(video_id)
        if video is None:
            raise ApiError(404, f"no video job '{video_id[:80]}' (finished jobs are kept for a bounded number)",
                           param="video_id", code="video_not_found")
        return video

    @app.post("/v1/videos", response_model=VideoObject, response_model_exclude_none=True)
    async def create(request: Request):
        # 1. The body (JSON or a form) against the schema, then the model's limits; decoding the first frame and
        #    resolving a camera path run off the event loop.
        fields, upload = parse_body(request.headers.get("content-type", ""), await request.body())
        try:
            body = VideoGenerationRequest.model_validate(fields)
        except ValidationError as exc:
            raise validation_error(exc) from None
        job = await asyncio.to_thread(build_clip_job, state.models, body, upload)
        check_workers(state.runner)
        # 2. The job's record, then its place in the queue (429 when full).
        r = job.request
        frames = r.camera.num_frames if hasattr(r, "camera") else r.frames
        if job.context.get("refiner") is not None:  # stage 2 drops the anchor frame
            from ..pipelines.world_refiner import SINK_FRAMES

            frames -= SINK_FRAMES
        video = state.videos.create(model=job.model, prompt=body.prompt, width=r.width, height=r.height,
                                    frames=frames, fps=job.context["fps"])
        job.context.update(path=state.videos.path_for(video), watch=video.watch)
        video.job = job
        try:
            future = state.scheduler.submit(job)
        except QueueFull as exc:
            state.videos.delete(video.id)
            raise queue_full(state, exc) from None

        def finished(done) -> None:
            error = done.exception()
            video.finish(None if error else done.result(), error)
            if state.videos.get(video.id) is None:  # deleted while it ran: its file goes too
                for leftover in state.videos.folder.glob(f"{video.id}.*"):
                    leftover.unlink(missing_ok=True)

        future.add_done_callback(finished)
        return video.to_object(base(request))

    @app.get("/v1/videos", response_model=VideoList, response_model_exclude_none=True)
    async def listing(request: Request, after: str | None = Query(None, max_length=100),
                      limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = "desc"):
        jobs, more = state.videos.list(after=after, limit=limit, order=order)
        data = [v.to_object(base(request)) for v in jobs]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=more)

    @app.get("/v1/videos/{video_id}", response_model=VideoObject, response_model_exclude_none=True)
    async def retrieve(video_id: str, request: Request):
        return find(video_id).to_object(base(request))

    @app.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
    async def delete(video_id: str):
        video = find(video_id)
        job = video.job
        if job is not None:  # waiting: dropped now; running: stopped at its next step
            state.scheduler.withdraw(job)
        state.videos.delete(video_id)
        return VideoDeleted(id=video_id)

    @app.get("/v1/videos/{video_id}/content")
    async def content(video_id: str, variant: Literal["video", "camera"] = "video"):
        video = find(video_id)
        if video.status != "completed" or video.path is None:
            raise ApiError(409, f"video {video_id} is {video.status.replace('_', ' ')}, not completed",
                           param="video_id", code="video_not_ready")
        if variant == "camera":
            from ..camera.export import camera_json_path

            camera = camera_json_path(video.path)
            if not camera.is_file():
                raise ApiError(404, "only world-model clips have a camera file", param="variant",
                               code="variant_not_found")
            return FileResponse(camera, media_type="application/json", filename=f"{video_id}.camera.json")
        if not video.path.is_file():
            raise ApiError(404, f"the file of video {video_id} is gone", param="video_id", code="video_not_found")
        return FileResponse(video.path, media_type="video/mp4", filename=f"{video_id}.mp4")
