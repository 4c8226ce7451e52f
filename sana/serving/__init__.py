"""`sana serve`'s engine side: an OpenAI-shaped HTTP front end over the image, video and world pipelines.

- `schemas`: request / response bodies in OpenAI's shapes (images, videos), and the error shape;
- `admission`: the caps (prompt, n, steps, pixels from the memory plan, LoRAs from the allow-list) and an image
  body turned into a queued job; `clips`: a clip body turned into one, and a clip job run and written;
- `scheduler`: the bounded FIFO queue and the batching of requests that can share a forward;
- `worker`: the one thread that owns the models and runs the batches; `processes`: one worker process per device
  instead (`--gpus N`); `replicas`: Ray Serve replicas instead (`--ray`, the `ray` extra);
- `encoding`: the threads that encode a finished batch's images while the next batch generates; `warmup`: each
  image model generated at batch 1 and at the full batch before `/healthz` says ok (graphs captured);
- `loras`: allow-listed LoRAs merged into a served DiT for the batches that name them, and taken out exactly;
- `store` (images for `GET /v1/images/{id}/content`), `videos` (clip jobs and their files), `progress` (each job's
  steps for server-sent events), `metrics` (Prometheus' text format);
- `app` (the image routes), `video_routes` (`/v1/videos`), `forms` (JSON and multipart bodies), `page` (the web
  page at `/`, its files in `static/`, and `/v1/progress/{id}`), `guard` (API key, body size, counters).

FastAPI and uvicorn are an optional extra (`pip install ".[serve]"`); the route modules import them.
"""
