"""`sana serve`'s engine side: an OpenAI-shaped HTTP front end over the image pipeline.

- `schemas`: request / response bodies in OpenAI's shapes, and the error shape;
- `admission`: the caps (prompt, n, steps, pixels from the memory plan) and a body turned into an `ImageRequest`;
- `scheduler`: the bounded FIFO queue and the batching of requests that can share a forward;
- `worker`: the one thread that owns the models and runs the batches;
- `store`: generated images kept in memory for `GET /v1/images/{id}/content`;
- `metrics`: counters and histograms in Prometheus' text format;
- `app`: the FastAPI routes, the body-size and API-key checks.

FastAPI and uvicorn are an optional extra (`pip install "sana-cli[serve]"`); only `app` imports them.
"""
