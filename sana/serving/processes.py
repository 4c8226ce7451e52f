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

A process that dies (killed, out of memory) is seen at once, by its pipe closing or its exit: the jobs it was
running fail (`WorkerLost`, a 503), no batch goes to it, /healthz lists it, and it is started again (loading its
models again). With no process left, waiting and new requests are answered 503 at once.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import SanaError
from .metrics import Metrics
from .progress import ProgressHub
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")
JOB_FIELDS = ("model", "key", "request", "images", "context", "kind", "progress_id")
STARTUP_SECONDS = 1800.0  # loading large models on a cold disk
RESTART_LIMIT, RESTART_WINDOW = 3, 600.0  # a process dying more often than this stays down (and is reported)


class RemoteError(Exception):
    """A batch failed in a worker process (its message, with the original type's name)."""


class WorkerLost(RemoteError):
    """The worker process running the job died (or no worker process is left to run it)."""


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


@dataclass
class _Slot:
    """One worker process on one device (a restart gets a new slot): its pipe, whether it can take a batch, and
    the jobs it was sent and has not answered."""

    device: str
    process: Any
    conn: Any
    free: threading.Event = field(default_factory=threading.Event)
    warm: threading.Event = field(default_factory=threading.Event)  # warmed up (or gone)
    pending: dict = field(default_factory=dict)  # ticket -> Job
    warmup: float | None = None
    gone: bool = False


class ProcessPool:
    """The server's side: the worker processes, and a dispatcher and a reader thread for each (the interface of
    `Worker`). A process that dies is noticed at once (its pipe closes or its exit is seen): its unanswered jobs
    fail (`WorkerLost`), it is reaped, and it is started again (loading the models again) unless it was restarted
    `RESTART_LIMIT` times within `RESTART_WINDOW` seconds."""

    def __init__(self, models: dict, scheduler: Scheduler, metrics: Metrics, progress: ProgressHub, *,
                 loader: Callable[..., dict], spec: dict, devices: list[str], warmup: bool = False):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress
        self.loader, self.spec, self.devices, self.warmup = loader, spec, devices, warmup
        self.batches = [0] * len(devices)  # batches each device's processes ran (/healthz)
        self._slots: list[_Slot] = []
        self._initial: list[_Slot] = []
        self._spawned: list = []  # every process started, so that stop() leaves none behind
        self._restarting = [False] * len(devices)
        self._restarts: list[deque[float]] = [deque() for _ in devices]
        self._threads: list[threading.Thread] = []
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._allowed: dict[str, list[str]] = {}

    @property
    def warming(self) -> bool:
        """A process started with the server is still warming up."""
        return not all(slot.warm.is_set() for slot in self._initial)

    @property
    def warmup_seconds(self) -> float | None:
        """The slowest process's warm-up, once every process has warmed up."""
        done = [slot.warmup for slot in self._initial if slot.warmup is not None]
        return max(done) if done and not self.warming else None

    @property
    def alive(self) -> int:
        """Worker processes that can take batches."""
        with self._lock:
            return sum(not slot.gone for slot in self._slots)

    @property
    def restarting(self) -> int:
        with self._lock:
            return sum(self._restarting)

    def workers(self) -> list[dict]:
        """Each device's process for /healthz: its device, pid, batches run and state (ok, restarting, lost)."""
        with self._lock:
            return [{"device": slot.device, "pid": slot.process.pid, "batches": self.batches[index],
                     "state": "ok" if not slot.gone else "restarting" if self._restarting[index] else "lost"}
                    for index, slot in enumerate(self._slots)]

    def start(self) -> None:
        """Start the processes and wait until each has loaded (SanaError if one cannot); then the readers and the
        dispatchers (the processes warm up meanwhile). Called again (by the app's start-up), it does nothing."""
        if self._started:
            return
        self._started = True
        self._slots = [self._spawn(device) for device in self.devices]
        self._initial = list(self._slots)  # their warm-up is what /healthz's "warming" waits for
        for slot in self._slots:
            try:
                self._allowed = self._await_ready(slot)
            except SanaError:
                self.stop()
                raise
        for index, slot in enumerate(self._slots):
            self._serve(index, slot)

    def lora_names(self) -> dict[str, list[str]]:
        """model -> the allow-listed LoRAs its worker processes took."""
        return self._allowed

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scheduler.close()
        for thread in list(self._threads):
            if thread.name.startswith("sana-dispatch"):
                thread.join(timeout)
        serving = {id(slot.process) for slot in self._slots}
        for slot in list(self._slots):
            try:
                slot.conn.send(None)
            except (OSError, ValueError):
                pass
        for process in list(self._spawned):
            if id(process) not in serving:  # still loading (a restart): nothing of its to finish
                process.terminate()
        for process in list(self._spawned):
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)
        for thread in list(self._threads):
            thread.join(timeout)

    # -- the processes --------------------------------------------------------------------------------------------

    def _spawn(self, device: str) -> _Slot:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
        ours, theirs = context.Pipe()
        process = context.Process(target=worker_process, args=(theirs, self.loader, self.spec, device, self.warmup),
                                  name=f"sana-worker-{device}", daemon=True)
        process.start()
        theirs.close()  # the child holds its end now: when it dies, our end reads EOF
        self._spawned = [p for p in self._spawned if p.is_alive()] + [process]
        return _Slot(device=device, process=process, conn=ours)

    def _await_ready(self, slot: _Slot) -> dict[str, list[str]]:
        """The LoRAs the process took, once it has loaded its models; SanaError if it cannot."""
        conn, device = slot.conn, slot.device
        try:
            if not conn.poll(STARTUP_SECONDS):
                raise SanaError(f"the worker process on {device} did not start")
            status, detail = conn.recv()
        except (EOFError, OSError):
            slot.process.join(5)
            raise SanaError(f"the worker process on {device} stopped while loading its models "
                            f"({exit_reason(slot.process.exitcode)})") from None
        if status != "ready":
            raise SanaError(f"a worker process could not load its models ({detail})")
        return detail

    def _serve(self, index: int, slot: _Slot) -> None:
        """The slot's reader and dispatcher threads."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        for target, name in ((self._read, "read"), (self._dispatch, "dispatch")):
            thread = threading.Thread(target=target, args=(index, slot), name=f"sana-{name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _dispatch(self, index: int, slot: _Slot) -> None:
        while not self._stop.is_set() and not slot.gone:
            if not slot.free.wait(0.5) or slot.gone:
                continue
            batch = self.scheduler.next_batch(timeout=0.5)
            if not batch:
                continue
            with self._lock:
                lost = slot.gone
                if not lost:
                    tickets = [next(self._tickets) for _ in batch]
                    slot.pending.update(zip(tickets, batch))
                    slot.free.clear()
            if lost:  # the process died while the batch was being gathered
                self._fail(batch, WorkerLost(f"the worker process on {slot.device} stopped"))
                return
            self.batches[index] += 1
            self.metrics.batch(sum(job.images for job in batch))
            try:
                slot.conn.send([(ticket, {name: _portable(name, getattr(job, name)) for name in JOB_FIELDS})
                                for ticket, job in zip(tickets, batch)])
            except (OSError, ValueError):  # the process died: the reader sees it too and fails its jobs
                self._lost(index, slot)
                return

    def _read(self, index: int, slot: _Slot) -> None:
        """What the process sends back (progress events, answers, "free" and "warm") until its pipe closes or the
        process exits, whichever is seen first."""
        conn = slot.conn
        while True:
            ready = multiprocessing.connection.wait([conn, slot.process.sentinel])
            if conn not in ready:  # exited, and nothing left to read
                break
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "event":
                self.progress.publish(message[1], message[2])
            elif kind == "answer":
                self._answer(slot, *message[1:])
            elif kind == "free":
                slot.free.set()
            elif kind == "warm":
                slot.warmup = message[1]
                if message[1] is not None:
                    log.info("worker process on %s warmed up in %.1f s", slot.device, message[1])
                slot.warm.set()
                slot.free.set()
        self._lost(index, slot)

    def _answer(self, slot: _Slot, ticket: int, status: str, value: Any) -> None:
        with self._lock:
            job = slot.pending.pop(ticket, None)
        if job is None:
            return
        if status == "ok":
            self.metrics.finished(job.model, time.monotonic() - job.enqueued, job.images)
            job.future.set_result(value)
        else:
            job.future.set_exception(RemoteError(value))

    def _lost(self, index: int, slot: _Slot) -> None:
        """The process is gone: its unanswered jobs fail, it is reaped, and it is restarted where allowed; with no
        process left, the waiting jobs fail too."""
        with self._lock:
            if slot.gone:
                return
            slot.gone = True
            jobs, slot.pending = list(slot.pending.values()), {}
            restart = not self._stop.is_set() and self._may_restart(index)
            self._restarting[index] = restart
        slot.warm.set()
        slot.free.set()
        if self._stop.is_set():
            self._fail(jobs, WorkerLost("the server is shutting down"))
            return
        slot.process.join(5)  # reaped: no defunct process left behind
        reason = exit_reason(slot.process.exitcode)
        log.error("worker process on %s (pid %s) is gone (%s)%s; %s", slot.device, slot.process.pid, reason,
                  f": {len(jobs)} running request(s) failed" if jobs else "",
                  "restarting it (it loads the models again)" if restart else
                  f"not restarted ({RESTART_LIMIT} restarts within {RESTART_WINDOW:.0f} s)")
        self._fail(jobs, WorkerLost(f"the worker process on {slot.device} stopped ({reason}) while the request ran"))
        if self.alive == 0:
            self.scheduler.fail_waiting(WorkerLost("no worker process is running"))
        if restart:
            threading.Thread(target=self._restart, args=(index,), name=f"sana-restart-{index}", daemon=True).start()

    def _may_restart(self, index: int) -> bool:
        now, times = time.monotonic(), self._restarts[index]
        while times and now - times[0] > RESTART_WINDOW:
            times.popleft()
        if len(times) >= RESTART_LIMIT:
            return False
        times.append(now)
        return True

    def _restart(self, index: int) -> None:
        device = self.devices[index]
        slot = self._spawn(device)
        try:
            self._await_ready(slot)
        except SanaError as exc:
            with self._lock:
                self._restarting[index] = False
            if not self._stop.is_set():
                log.error("could not restart the worker process on %s: %s", device, exc)
            slot.process.terminate()
            slot.process.join(5)
            return
        with self._lock:
            self._restarting[index] = False
            if not self._stop.is_set():
                self._slots[index] = slot
        if self._stop.is_set():
            slot.conn.send(None)
            return
        log.info("worker process on %s restarted (pid %s)", device, slot.process.pid)
        self._serve(index, slot)

    def _fail(self, jobs: list[Job], error: Exception) -> None:
        for job in jobs:
            self.progress.publish(job.progress_id, {"status": "failed", "message": str(error)[:500]})
            if not job.future.done():
                job.future.set_exception(error)


def exit_reason(code: int | None) -> str:
    """A process's exit code in words."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _portable(name: str, value: Any) -> Any:
    """A job field as it crosses to the worker process (the server-side callbacks stay here)."""
    if name == "context":
        return {k: v for k, v in value.items() if not callable(v)}
    return value

