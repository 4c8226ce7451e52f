"""`sana serve --gpus N`: one worker process per device behind the one queue.

The server process admits requests and keeps the scheduler, the metrics and the progress streams; it loads no
weights. Each worker process loads every model on its own device (`loader(device=..., **spec)`, a top-level
function the command passes, so the spawned process can import it), warms them up (with `warmup`), and runs the
batches one dispatcher thread of the server hands it over a pipe; a reader thread takes what comes back: each
denoising step's progress event, each job's encoded images (or its error) once the process's encoding threads have
encoded them, and "free" as soon as the process has generated a batch and can take the next one (so a batch
generates while the one before it is encoded). A dispatcher takes the next batch only when its process is free,
so the batches go to whichever device is idle, oldest first. Image models for now (a clip job's record lives in
the server process).
"""

from __future__ import annotations

import itertools
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
    """The worker process's end of the pipe, shared by its threads (the worker's progress events, the encoding
    threads' answers): one message at a time."""

    def __init__(self, conn):
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self.conn.send(message)

    def publish(self, progress_id: str | None, event: dict) -> None:
        if progress_id is not None:
            self.send(("event", progress_id, event))


def worker_process(conn, loader: Callable[..., dict], spec: dict, device: str, warmup: bool = False) -> None:
    """A worker process's life: load, say which LoRAs each model takes, warm up, then run batches until told to
    stop; the encoding still under way when told is finished and answered first."""
    from .worker import Worker

    try:
        models = loader(device=device, **spec)
    except BaseException as exc:  # reported to the server, which stops with it
        conn.send(("failed", f"{device}: {exc}"))
        return
    pipe = PipeProgress(conn)
    pipe.send(("ready", {name: sorted(m.loras.allowed) if m.loras is not None else []
                         for name, m in models.items()}))
    worker = Worker(models, scheduler=None, metrics=Metrics(), progress=pipe, max_batch=spec.get("max_batch"),
                    warmup=warmup)
    if warmup:
        worker.warm_up()
    pipe.send(("warm", worker.warmup_seconds))
    while True:
        message = conn.recv()
        if message is None:
            break
        jobs = []
        for ticket, values in message:
            job = Job(**values)
            job.future.add_done_callback(lambda future, ticket=ticket: pipe.send(("answer", ticket, *_outcome(future))))
            jobs.append(job)
        worker.run_batch(jobs)
        pipe.send(("free",))
    worker.encoder.close()


def _outcome(future) -> tuple[str, Any]:
    error = future.exception()
    return ("error", f"{type(error).__name__}: {error}") if error else ("ok", future.result())


class ProcessPool:
    """The server's side: the worker processes, and a dispatcher and a reader thread for each (the interface of
    `Worker`)."""

    def __init__(self, models: dict, scheduler: Scheduler, metrics: Metrics, progress: ProgressHub, *,
                 loader: Callable[..., dict], spec: dict, devices: list[str], warmup: bool = False):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress
        self.loader, self.spec, self.devices, self.warmup = loader, spec, devices, warmup
        self.batches = [0] * len(devices)  # batches each process ran (/healthz)
        self._conns: list = []
        self._processes: list = []
        self._threads: list[threading.Thread] = []
        self._readers: list[threading.Thread] = []
        self._free = [threading.Event() for _ in devices]  # the process can take a batch
        self._warm = [threading.Event() for _ in devices]  # the process has warmed up (or gone)
        self._gone = [False] * len(devices)
        self._warmups: list[float | None] = [None] * len(devices)
        self._pending: list[dict[int, Job]] = [{} for _ in devices]  # ticket -> job sent, not answered yet
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False

    @property
    def warming(self) -> bool:
        """A process is still warming up."""
        return not all(event.is_set() for event in self._warm)

    @property
    def warmup_seconds(self) -> float | None:
        """The slowest process's warm-up, once every process has warmed up."""
        done = [s for s in self._warmups if s is not None]
        return max(done) if done and not self.warming else None

    def start(self) -> None:
        """Start the processes and wait until each has loaded (SanaError if one cannot); then the readers and the
        dispatchers (the processes warm up meanwhile). Called again (by the app's start-up), it does nothing."""
        if self._started:
            return
        self._started = True
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
        for device in self.devices:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_process, args=(theirs, self.loader, self.spec, device,
                                                                   self.warmup),
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
            for target, group, name in ((self._read, self._readers, "read"), (self._dispatch, self._threads,
                                                                             "dispatch")):
                thread = threading.Thread(target=target, args=(index,), name=f"sana-{name}-{index}", daemon=True)
                thread.start()
                group.append(thread)

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
        for thread in self._readers:
            thread.join(timeout)

    def _dispatch(self, index: int) -> None:
        conn, free = self._conns[index], self._free[index]
        while not self._stop.is_set():
            if not free.wait(0.5):
                continue
            if self._gone[index]:
                return
            batch = self.scheduler.next_batch(timeout=0.5)
            if not batch:
                continue
            self.batches[index] += 1
            self.metrics.batch(sum(job.images for job in batch))
            free.clear()
            with self._lock:
                tickets = [next(self._tickets) for _ in batch]
                self._pending[index].update(zip(tickets, batch))
            try:
                conn.send([(ticket, {name: _portable(name, getattr(job, name)) for name in JOB_FIELDS})
                           for ticket, job in zip(tickets, batch)])
            except (OSError, ValueError) as exc:  # the process died: its jobs fail, the others go on serving
                self._lost(index, exc)
                return

    def _read(self, index: int) -> None:
        """What the process sends back: progress events, answers, "free" and "warm"; its end when it stops."""
        conn = self._conns[index]
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:
                self._lost(index, exc)
                return
            kind = message[0]
            if kind == "event":
                self.progress.publish(message[1], message[2])
            elif kind == "answer":
                self._answer(index, *message[1:])
            elif kind == "free":
                self._free[index].set()
            elif kind == "warm":
                self._warmups[index] = message[1]
                if message[1] is not None:
                    log.info("worker process on %s warmed up in %.1f s", self.devices[index], message[1])
                self._warm[index].set()
                self._free[index].set()

    def _answer(self, index: int, ticket: int, status: str, value: Any) -> None:
        with self._lock:
            job = self._pending[index].pop(ticket, None)
        if job is None:
            return
        if status == "ok":
            self.metrics.finished(job.model, time.monotonic() - job.enqueued, job.images)
            job.future.set_result(value)
        else:
            job.future.set_exception(RemoteError(value))

    def _lost(self, index: int, exc: BaseException) -> None:
        """The process's pipe closed: its unanswered jobs fail and its dispatcher stops; serving goes on."""
        with self._lock:
            jobs, self._pending[index] = list(self._pending[index].values()), {}
            first = not self._gone[index]
            self._gone[index] = True
        if first and not self._stop.is_set():
            log.error("worker process on %s is gone: %s", self.devices[index], str(exc) or type(exc).__name__)
        for job in jobs:
            job.future.set_exception(RemoteError(f"the worker process on {self.devices[index]} stopped"))
        self._warm[index].set()
        self._free[index].set()


def _portable(name: str, value: Any) -> Any:
    """A job field as it crosses to the worker process (the server-side callbacks stay here)."""
    if name == "context":
        return {k: v for k, v in value.items() if not callable(v)}
    return value

