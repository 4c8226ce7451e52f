"""Running one command on several GPUs: the command re-executes itself under torchrun (the standard launcher),
one process a GPU, after the parent has checked everything. Nothing here imports torch."""

from __future__ import annotations

import os
import sys

from . import console


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    if not launched_by_torchrun():
        return 0, 1
    return int(os.environ.get("RANK", os.environ["LOCAL_RANK"])), int(os.environ["WORLD_SIZE"])


def exec_torchrun(processes: int, env: dict[str, str] | None = None) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node=N -m sana_cli <the same arguments>` (less
    --gpus, which the processes must not act on again); `env` is added to their environment."""
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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "sana_cli", *args]
    console.info(f"launching {processes} processes: torchrun --standalone --nproc-per-node={processes} -m sana_cli "
                 f"{' '.join(args)}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, {**os.environ, **(env or {})})
