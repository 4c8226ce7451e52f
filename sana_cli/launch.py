"""Running one command on several GPUs: the command runs itself again under torchrun (the standard launcher), one
process a GPU, after the parent has checked everything. The parent's side imports no torch.

Two ways in. `exec_torchrun` hands the whole process over (training: the ranks work together and report
themselves). `spread_jobs` splits the planned outputs of a generating command (`sana gen`, `sana video`: the kind
of output is a parameter): the parent plans once, so names, drawn seeds and skipped outputs are decided once;
each process makes its share (`share_of_plan`); the parent shows every process's progress under its rank, sums
up, and reports a process that failed as one error line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sana.errors import Interrupted, SanaError, UsageError

from . import console

# A planned job: (prompt, settings, seeds, output paths), as `generation.plan_jobs` makes them.
PlannedJob = tuple[str, dict[str, Any], list[int], list[Path]]

# The parent's plan, handed to each process as a file name.
JOB_PLAN_ENV = "SANA_JOB_PLAN"
# The command's arguments, handed to each process as JSON: on torchrun's command line, its own parser would read
# them too and refuse a prefix of one of its options (`--num` could be `--numa-binding`).
ARGUMENTS_ENV = "SANA_PROCESS_ARGUMENTS"
# torchrun writes each process's stderr lines with this prefix (`--tee`), so the parent tells them from its own.
PREFIX_TEMPLATE_ENV = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"
RANK_PREFIX = "[rank ${rank}] "
_RANK_LINE = re.compile(r"^\[(?:rank |default)(\d+)\]:? ?(.*)$")  # ours, or torchrun's own "[default0]:"
# torchrun's failure report: the first process that failed and its exit code.
_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def arguments_from_parent() -> list[str] | None:
    """In a process that `exec_torchrun` or `spread_jobs` started: the command's arguments. None anywhere else."""
    if launched_by_torchrun() and ARGUMENTS_ENV in os.environ:
        return json.loads(os.environ[ARGUMENTS_ENV])
    return None


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    if not launched_by_torchrun():
        return 0, 1
    return int(os.environ.get("RANK", os.environ["LOCAL_RANK"])), int(os.environ["WORLD_SIZE"])


def exec_torchrun(processes: int, env: dict[str, str] | None = None) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node=N -m sana_cli <the same arguments>` (less
    --gpus, which the processes must not act on again); `env` is added to their environment."""
    args = _arguments_without_gpus()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "sana_cli"]
    _announce(processes, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, {**os.environ, **(env or {}), ARGUMENTS_ENV: json.dumps(args)})


# -- checks (the parent, no torch) -----------------------------------------------------------------------------

def visible_gpus() -> int:
    """CUDA GPUs a process here may use, counted without importing torch (a CUDA context costs seconds): the
    NVIDIA driver's GPUs (`nvidia-smi -L`), as many as CUDA_VISIBLE_DEVICES lets through; 0 without the driver."""
    import shutil

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = sum(line.startswith("GPU ") for line in listing.splitlines())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    let_through = 0
    for entry in visible.split(","):  # CUDA stops at the first entry that names no device ("-1" hides them all)
        if not entry.strip() or entry.strip().startswith("-"):
            break
        let_through += 1
    return min(found, let_through)


def check_gpus(gpus: int, flags: dict[str, Any], *, noun: str) -> None:
    """--gpus N's checks, before torch is imported: N >= 1; more than one process needs more than one output
    (--prompts FILE or --num N); the processes run here (not on a --server); --device cpu runs N CPU processes,
    otherwise each process takes a GPU, so N GPUs must be visible."""
    if gpus < 1:
        raise UsageError(f"--gpus {gpus} must be at least 1")
    if gpus == 1:
        return
    if flags.get("server"):
        raise UsageError(f"--gpus {gpus} with --server: the server spreads its own work",
                         "drop --gpus (start the server with --gpus N instead)")
    if not flags.get("prompts") and int(flags.get("num") or 1) <= 1:
        raise UsageError(f"--gpus {gpus} splits a run's {noun} across processes, and this run makes one",
                         "give --prompts FILE or --num N, or drop --gpus")
    check_gpu_count(gpus, str(flags.get("device") or "auto"))


def check_gpu_count(gpus: int, device: str) -> None:
    """N processes: --device cpu runs N CPU processes; otherwise each takes a GPU, so N GPUs must be visible."""
    if gpus <= 1 or device == "cpu":
        return
    if device not in ("auto", "cuda"):
        raise UsageError(f"--gpus {gpus} takes --device auto, cuda or cpu, not {device}",
                         "the processes use the visible GPUs 0 to N-1 (CUDA_VISIBLE_DEVICES picks them)")
    found = visible_gpus()
    if found < gpus:
        hint = (f"use --gpus {found}" if found > 1 else "drop --gpus" if found == 1
                else f"--device cpu runs {gpus} CPU processes")
        raise UsageError(f"--gpus {gpus}: {found} GPU(s) visible here", hint)


# -- the plan, split ---------------------------------------------------------------------------------------------

def write_job_plan(planned_jobs: list[PlannedJob], path: Path) -> None:
    rows = [{"prompt": p, "settings": s, "seeds": seeds, "paths": [str(x) for x in paths]}
            for p, s, seeds, paths in planned_jobs]
    path.write_text(json.dumps(rows, default=str), encoding="utf-8")


def read_job_plan(path: str | Path) -> list[PlannedJob]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(r["prompt"], r["settings"], r["seeds"], [Path(x) for x in r["paths"]]) for r in rows]


def share_of_jobs(planned_jobs: list[PlannedJob], rank: int, world: int) -> list[PlannedJob]:
    """Process `rank`'s outputs of the plan: every `world`-th output in plan order, kept grouped by prompt (a
    prompt's outputs on one process are still one batch)."""
    items = [(j, seed, path) for j, (_, _, seeds, paths) in enumerate(planned_jobs) for seed, path in zip(seeds, paths)]
    mine: dict[int, tuple[list[int], list[Path]]] = {}
    for j, seed, path in items[rank::world]:
        seeds, paths = mine.setdefault(j, ([], []))
        seeds.append(seed)
        paths.append(path)
    return [(planned_jobs[j][0], planned_jobs[j][1], *mine[j]) for j in sorted(mine)]


def share_of_plan() -> list[PlannedJob] | None:
    """In one of `spread_jobs`'s processes: this process's share of the parent's plan. None anywhere else (the
    command plans its outputs itself)."""
    rank, world = rank_and_world()
    if world > 1 and JOB_PLAN_ENV in os.environ:
        return share_of_jobs(read_job_plan(os.environ[JOB_PLAN_ENV]), rank, world)
    return None


def process_device(device):
    """In one of several torchrun processes on GPUs: GPU LOCAL_RANK, each process its own; else `device`."""
    if rank_and_world()[1] == 1 or device.type != "cuda":
        return device
    import torch

    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


# -- the parent --------------------------------------------------------------------------------------------------

def spread_jobs(planned_jobs: list[PlannedJob], gpus: int, *, noun: str, device: str | None) -> bool:
    """--gpus N in the parent, once the outputs are planned and checked (`check_gpus`): this command again under
    torchrun, one process a GPU (N CPU processes with --device cpu), each making its share of this plan. Returns
    True when the processes made every output; raises a one-line SanaError naming the process that failed, or
    Interrupted on Ctrl-C, with how many outputs were written. False (make them here) for a single output."""
    total = sum(len(paths) for *_, paths in planned_jobs)
    processes = min(gpus, total)
    if processes < gpus:
        what = f"{total} {noun}" if total > 1 else f"one {noun.removesuffix('s')}"
        console.notice(f"--gpus {gpus} for {what} to make: {processes} process{'es' if processes > 1 else ''}")
    if processes <= 1:
        return False
    env = {PREFIX_TEMPLATE_ENV: RANK_PREFIX}
    if str(device or "auto") == "cpu" and "SANA_THREADS" not in os.environ:  # the cores shared, not fought over
        threads = str(max(1, _usable_cpus() // processes))
        env.update(SANA_THREADS=threads, OMP_NUM_THREADS=threads)
    shares = [sum(len(paths) for *_, paths in share_of_jobs(planned_jobs, r, processes)) for r in range(processes)]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sana-gpus-") as folder:
        plan = Path(folder) / "plan.json"
        write_job_plan(planned_jobs, plan)
        env[JOB_PLAN_ENV] = str(plan)
        args = _arguments_without_gpus()
        env[ARGUMENTS_ENV] = json.dumps(args)
        _announce(processes, args)
        try:
            code, errors, report = run_torchrun(processes, ["-m", "sana_cli"], env, Path(folder) / "logs")
        except KeyboardInterrupt:
            written = _written(planned_jobs, started)
            raise Interrupted(f"interrupted: {written} of {total} {noun} written",
                              "--skip-existing makes the rest" if written else None) from None
    if code == 0:
        per_rank = ", ".join(f"rank {r}: {n}" for r, n in enumerate(shares))
        console.info(f"{processes} processes made {total} {noun} in {time.time() - started:.1f} s ({per_rank})")
        return True
    written = _written(planned_jobs, started)
    raise SanaError(f"{_failure(errors, report, code, processes)}; {written} of {total} {noun} written",
                    "--skip-existing makes the rest" if written else None)


def run_torchrun(processes: int, args: list[str], env: dict[str, str], log_dir: Path
                 ) -> tuple[int, dict[int, str], str]:
    """`torchrun --standalone --nproc-per-node=N <args>`, each process's stderr shown under its rank (a note that
    several processes give is shown once) and its stdout passed through. Returns (torchrun's exit code, each
    failed process's last error line, torchrun's own report). On Ctrl-C the processes are stopped first."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "--tee=2", f"--log-dir={log_dir}", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(command, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True, errors="replace")
    errors: dict[int, str] = {}
    notes: set[str] = set()
    report: list[str] = []
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            match = _RANK_LINE.match(line)
            if match is None:  # torchrun's own logging and failure report: kept for the summary
                report.append(line)
                console.debug(line)
                continue
            rank, text = int(match.group(1)), match.group(2)
            if text.startswith("error: "):
                errors[rank] = text[len("error: "):]
                continue
            if text.startswith("note: "):
                if text in notes:
                    continue
                notes.add(text)
            if not console.settings.quiet:
                console.err.print(f"[rank {rank}] {text}", markup=False, highlight=False)
        return proc.wait(), errors, "\n".join(report)
    except KeyboardInterrupt:
        _stop(proc)
        raise


def _failure(errors: dict[int, str], report: str, code: int, processes: int) -> str:
    if errors:
        rank = min(errors)
        others = sorted(set(errors) - {rank})
        also = f" (and process{'es' if len(others) > 1 else ''} {', '.join(map(str, others))})" if others else ""
        return f"process {rank} of {processes} failed{also}: {errors[rank]}"
    cause = _ROOT_CAUSE.search(report)
    if cause:
        rank, exit_code = int(cause.group(1)), int(cause.group(2))
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"stopped with exit code {exit_code}"
        return f"process {rank} of {processes} {how}"
    return f"torchrun stopped with exit code {code}"


def _written(planned_jobs: list[PlannedJob], started: float) -> int:
    """Outputs of the plan written since `started` (the files, or the frame folders, of this run)."""
    count = 0
    for *_, paths in planned_jobs:
        for path in paths:
            try:
                count += Path(path).stat().st_mtime >= started - 1.0
            except OSError:
                pass
    return count


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C reached torchrun and its processes too (one process group); wait for them, then make sure."""
    import signal

    try:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _arguments_without_gpus() -> list[str]:
    """This command's arguments less --gpus N, which the processes must not act on again."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        args.append(arg)
    return args


def _announce(processes: int, args: list[str]) -> None:
    import shlex

    console.info(f"launching {processes} processes under torchrun --standalone --nproc-per-node={processes}: "
                 f"sana {shlex.join(args)}")
