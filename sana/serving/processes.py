"""`sana serve --gpus N`: one worker process per device behind the one queue.

The server process admits requests and keeps the scheduler, the metrics and the progress streams; it loads no
weights. Each worker process loads every model on its own device (`loader(device=..., **spec)`, a top-level
function the command passes, so the spawned process can import it) and runs the batches one dispatcher thread of
the server hands it over a pipe: the jobs go in, each denoising step's progress event and then the encoded images
(or the error) come back. A dispatcher takes the next batch only when its process is free, so the batches go to
whichever device is idle, oldest first. Image models for now (a clip job's record lives in the server process).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import Any, Callable

from ..errors import SanaError
from .metrics import Metrics
from .progress import ProgressHub
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")
JOB_FIELDS = ("model", "key", "request", "images", "context", "kind", "progress_id")
STARTUP_SECONDS = 1800.0  # loading large models on a cold disk


class RemoteError(Exception):
    """A batch failed in a worker process (its message, with the original type's name)."""


class PipeProgress:
    """The worker process's progress hub: each event goes back to the server over the pipe."""

    def __init__(self, conn):
        self.conn = conn

    def publish(self, progress_id: str | None, event: dict) -> None:
        if progress_id is not None:
            self.conn.send(("event", progress_id, event))


def worker_process(conn, loader: Callable[..., dict], spec: dict, device: str) -> None:
    """A worker process's life: load, say which LoRAs each model takes, then run batches until told to stop."""
    from .worker import Worker

    try:
        models = loader(device=device, **spec)
    except BaseException as exc:  # reported to the server, which stops with it
        conn.send(("failed", f"{device}: {exc}"))
        return
    conn.send(("ready", {name: sorted(m.loras.allowed) if m.loras is not None else [] for name, m in models.items()}))
    worker = Worker(models, scheduler=None, metrics=Metrics(), progress=PipeProgress(conn))
    while True:
        message = conn.recv()
        if message is None:
            return
        jobs = [Job(**values) for values in message]
        worker.run_batch(jobs)
        answers = []
        for job in jobs:
            error = job.future.exception()
            answers.append(("error", f"{type(error).__name__}: {error}") if error else ("ok", job.future.result()))
        conn.send(("done", answers))


class ProcessPool:
    """The server's side: the worker processes and a dispatcher thread for each (the interface of `Worker`)."""

    def __init__(self, models: dict, scheduler: Scheduler, metrics: Metrics, progress: ProgressHub, *,
                 loader: Callable[..., dict], spec: dict, devices: list[str]):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress
        self.loader, self.spec, self.devices = loader, spec, devices
        self.batches = [0] * len(devices)  # batches each process ran (/healthz)
        self._conns: list = []
        self._processes: list = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        """Start the processes and wait until each has loaded (SanaError if one cannot); then the dispatchers.
        Called again (by the app's start-up), it does nothing."""
        if self._started:
            return
        self._started = True
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
        for device in self.devices:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_process, args=(theirs, self.loader, self.spec, device),
                                      name=f"sana-worker-{device}", daemon=True)
            process.start()
            self._conns.append(ours)
            self._processes.append(process)
        for device, conn, process in zip(self.devices, self._conns, self._processes):
            if not conn.poll(STARTUP_SECONDS):
                self.stop()
                raise SanaError(f"the worker process on {device} did not start")
            status, detail = conn.recv()
            if status != "ready":
                self.stop()
                raise SanaError(f"a worker process could not load its models ({detail})")
            self._allowed = detail
        for index in range(len(self.devices)):
            thread = threading.Thread(target=self._dispatch, args=(index,), name=f"sana-dispatch-{index}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def lora_names(self) -> dict[str, list[str]]:
        """model -> the allow-listed LoRAs its worker processes took."""
        return self._allowed

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scheduler.close()
        for thread in self._threads:
            thread.join(timeout)
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()

    def _dispatch(self, index: int) -> None:
        conn = self._conns[index]
        while not self._stop.is_set():
            batch = self.scheduler.next_batch(timeout=0.5)
            if not batch:
                continue
            self.batches[index] += 1
            self.metrics.batch(sum(job.images for job in batch))
            try:
                conn.send([{name: _portable(name, getattr(job, name)) for name in JOB_FIELDS} for job in batch])
                answers = self._answers(conn)
            except (EOFError, OSError) as exc:  # the process died: its batch fails, the others go on serving
                log.error("worker process on %s is gone: %s", self.devices[index], exc)
                for job in batch:
                    job.future.set_exception(RemoteError(f"the worker process on {self.devices[index]} stopped"))
                return
            now = time.monotonic()
            for job, (status, value) in zip(batch, answers):
                if status == "ok":
                    self.metrics.finished(job.model, now - job.enqueued, job.images)
                    job.future.set_result(value)
                else:
                    job.future.set_exception(RemoteError(value))

    def _answers(self, conn) -> list[tuple[str, Any]]:
        while True:
            message = conn.recv()
            if message[0] == "event":
                self.progress.publish(message[1], message[2])
            else:
                return message[1]


def _portable(name: str, value: Any) -> Any:
    """A job field as it crosses to the worker process (the server-side callbacks stay here)."""
    if name == "context":
        return {k: v for k, v in value.items() if not callable(v)}
    return value

