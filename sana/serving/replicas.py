"""`sana serve --ray`: the models held by Ray Serve replicas (one GPU each, or CPU ones), behind the same HTTP app.

The server process keeps what it keeps with `--gpus N`: the routes, the admission caps, the bounded FIFO queue
(429 when full), the image store, the metrics and the progress streams; it loads no weights. Its dispatcher threads
hand the queued jobs, one at a time, to the replicas' deployment handle; Ray routes each to a replica, where
`@serve.batch` gathers the jobs that arrive within the batch window (up to `max_batch` of them) and the existing
`Worker` runs them, one forward per group of jobs that can share one (the scheduler's rule: the oldest leads, jobs
with its key join while the images fit). The gathered call returns once the forwards have run; each job then waits,
outside the batch, for the worker's encoding threads, so the next batch gathers and generates meanwhile. Replicas
warm up (with `warmup`) before Ray reports them started, so before this server listens. Ray's autoscaler adds and
removes replicas between the given bounds.

The front end stays one process, not Ray's HTTP proxy on every node, so that image URLs, progress and metrics live
in one place; what spreads over the cluster is the GPU work. Ray is imported here: this module is loaded only for
`--ray` (the `ray` extra).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ray import serve

from .metrics import Metrics
from .processes import JOB_FIELDS, RemoteError, WorkerLost, _portable
from .progress import ProgressHub
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")
DEPLOYMENT = "models"
SEEN_BATCHES = 4096  # batch ids remembered, so a batch's size is counted once however many jobs it answered
IN_FLIGHT_BATCHES = 3  # a replica's batches under way: one encoding, one generating, the next one gathering


# -- the replica (runs on the cluster) ------------------------------------------------------------------------------

class _Silent:
    """Progress inside a replica goes nowhere: the server publishes a job's start and end itself."""

    def publish(self, progress_id: str | None, event: dict) -> None:
        pass


class ModelReplica:
    """One replica: every model loaded on its device (`loader(device=..., **spec)`, as a `--gpus` worker process
    loads them) and the `Worker` that runs what `forward` gathers. With `num_gpus: 1` Ray shows the replica only
    its own GPU, so "cuda" is that GPU."""

    def __init__(self, loader: Callable[..., dict], spec: dict, device: str, max_batch: int, window: float,
                 warmup: bool = False):
        from ..device import pick_device, probe_device
        from .worker import Worker

        if spec.get("threads"):  # a CPU replica's torch threads: its own cores, not every idle one of the node
            os.environ["SANA_THREADS"] = str(spec["threads"])
        self.info = probe_device(pick_device(device))  # before the weights: what the server plans against
        self.models = loader(device=device, **spec)
        self.max_batch = max_batch
        self.worker = Worker(self.models, scheduler=None, metrics=Metrics(), progress=_Silent(), max_batch=max_batch,
                             warmup=warmup)
        if warmup:
            self.worker.warm_up()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sana-replica")  # one thread owns the models
        self.name = _replica_name(str(self.info.kind))
        self.forward.set_max_batch_size(max_batch)
        self.forward.set_batch_wait_timeout_s(window)

    def describe(self) -> dict:
        """What the server needs to admit requests: the device (probed before loading), each model's LoRAs, and the
        warm-up's seconds (None without one)."""
        loras = {name: sorted(m.loras.allowed) if m.loras is not None else [] for name, m in self.models.items()}
        return {"device_info": self.info, "replica": self.name, "loras": loras,
                "warmup_s": self.worker.warmup_seconds}

    async def generate(self, fields: dict) -> tuple[str, Any, dict]:
        """One job (a `Job`'s portable fields) answered as ("ok", encoded images, batch) or ("error", message,
        batch) once its images are encoded; `batch` says which forward ran it: {"id", "images", "replica"}."""
        job, batch = await self.forward(fields)
        try:
            return "ok", await asyncio.wrap_future(job.future), batch
        except Exception as exc:
            return "error", f"{type(exc).__name__}: {exc}", batch

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)  # both set from the server's flags in __init__
    async def forward(self, fields: list[dict]) -> list[tuple[Job, dict]]:
        """The jobs gathered within the batch window, generated (not yet encoded): each `Job` with its forward."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._run, fields)

    def _run(self, fields: list[dict]) -> list[tuple[Job, dict]]:
        jobs = [Job(**values) for values in fields]
        forwards = {}
        for group in forward_groups(jobs, self.max_batch):
            self.worker.run_batch(group)
            batch = {"id": uuid.uuid4().hex, "images": sum(job.images for job in group), "replica": self.name}
            forwards.update((id(job), batch) for job in group)
        return [(job, forwards[id(job)]) for job in jobs]


def forward_groups(jobs: list[Job], max_batch: int) -> list[list[Job]]:
    """The jobs one `@serve.batch` call gathered, split into forwards: the oldest job leads, younger jobs with its
    key join while the images fit in `max_batch`."""
    left, groups = list(jobs), []
    while left:
        leader = left.pop(0)
        group, images = [leader], leader.images
        for job in list(left):
            if job.key == leader.key and images + job.images <= max_batch:
                left.remove(job)
                group.append(job)
                images += job.images
        groups.append(group)
    return groups


def _replica_lost(exc: Exception) -> bool:
    """The replica running a job died, or none is there to take it."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(exc, (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def _replica_name(kind: str) -> str:
    import ray

    tag = serve.get_replica_context().replica_tag
    return f"{tag} ({kind}, {ray.util.get_node_ip_address()})"


# -- deploying ----------------------------------------------------------------------------------------------------

def deploy(loader: Callable[..., dict], spec: dict, *, app: str, gpu: bool, cpus: int, max_batch: int,
           window: float, replicas: int, max_replicas: int, warmup: bool = False):
    """The replicas started (or replaced) as the Serve application `app`, with no HTTP route of Serve's own;
    returns their handle once every replica has loaded (and warmed up, with `warmup`). `max_replicas` above
    `replicas`: Ray autoscales between them, aiming at one full batch in each replica."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_gpus": 1} if gpu else {"num_cpus": cpus},
        "max_ongoing_requests": IN_FLIGHT_BATCHES * max_batch,
        "logging_config": {"enable_access_log": False},
    }
    if max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "initial_replicas": replicas,
                                         "max_replicas": max_replicas, "target_ongoing_requests": max_batch}
    else:
        options["num_replicas"] = replicas
    serve.start(proxy_location="Disabled")  # the server's own uvicorn answers HTTP; Serve's proxy would take :8000
    device = "cuda" if gpu else "cpu"
    target = serve.deployment(ModelReplica, **options).bind(loader, spec, device, max_batch, window, warmup)
    return serve.run(target, name=app, route_prefix=None)


def remove(app: str, *, whole: bool) -> None:
    """Take the application down; `whole`: Serve with it (a Ray this server started itself)."""
    try:
        serve.shutdown() if whole else serve.delete(app)
    except Exception as exc:  # shutting down: a cluster already gone is no reason to fail
        log.warning("could not remove the Ray Serve application %s: %s", app, exc)


# -- the server's side ------------------------------------------------------------------------------------------

class ReplicaPool:
    """The server's side (the interface of `Worker`): `in_flight` dispatcher threads, each handing the next queued
    job to the replicas and answering it; `devices` / `batches` are the replicas seen so far (/healthz)."""

    warming = False  # the replicas warmed up before Ray reported them started

    def __init__(self, handle, scheduler: Scheduler, metrics: Metrics, progress: ProgressHub, *, in_flight: int,
                 on_stop: Callable[[], None] | None = None, warmup_seconds: float | None = None):
        self.handle = handle
        self.warmup_seconds = warmup_seconds  # a replica's (the first one described)
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress
        self.in_flight = max(1, in_flight)
        self.on_stop = on_stop
        self._counts: dict[str, int] = {}  # replica -> batches it ran
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def devices(self) -> list[str]:
        with self._lock:
            return list(self._counts)

    @property
    def batches(self) -> list[int]:
        with self._lock:
            return list(self._counts.values())

    def start(self) -> None:
        if self._threads:
            return
        for index in range(self.in_flight):
            thread = threading.Thread(target=self._dispatch, name=f"sana-ray-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scheduler.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.on_stop:
            self.on_stop()

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            for job in self.scheduler.next_batch(timeout=0.5):  # one job: Ray's batching gathers them
                self._forward(job)

    def _forward(self, job: Job) -> None:
        self.progress.publish(job.progress_id, {"status": "running", "phase": "start"})
        fields = {name: _portable(name, getattr(job, name)) for name in JOB_FIELDS}
        try:
            status, value, batch = self.handle.generate.remote(fields).result()
        except Exception as exc:  # a replica died or Ray could not route the job: this job fails, serving goes on
            log.error("Ray Serve could not run a job for %s: %s: %s", job.model, type(exc).__name__, exc)
            # Serve replaces a dead replica itself (loading the models again) and routes new jobs to live ones.
            status = "lost" if _replica_lost(exc) else "error"
            value, batch = f"{type(exc).__name__}: {_first_line(exc)}", None
        if batch is not None:
            self._count(batch)
        if status == "ok":
            self.metrics.finished(job.model, time.monotonic() - job.enqueued, job.images)
            self.progress.publish(job.progress_id, {"status": "done"})
            job.future.set_result(value)
        else:
            self.progress.publish(job.progress_id, {"status": "failed", "message": str(value)[:500]})
            job.future.set_exception(WorkerLost(f"the Ray Serve replica running it stopped ({value})")
                                     if status == "lost" else RemoteError(value))

    def _count(self, batch: dict) -> None:
        """A forward's size in the metrics and its replica's count, once per forward."""
        with self._lock:
            if batch["id"] in self._seen:
                return
            self._seen.add(batch["id"])
            self._order.append(batch["id"])
            if len(self._order) > SEEN_BATCHES:
                self._seen.discard(self._order.popleft())
            self._counts[batch["replica"]] = self._counts.get(batch["replica"], 0) + 1
        self.metrics.batch(batch["images"])
