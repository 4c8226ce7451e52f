"""Shared benchmark helpers: CUDA timing with triton.testing.do_bench (median) and the printed table."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(description: str, shape_names: Sequence[str], *, sweep: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if sweep:
        parser.add_argument("--sweep", action="store_true", help="time every candidate launch shape instead")
    parser.add_argument("--shapes", nargs="*", choices=list(shape_names), default=list(shape_names),
                        help="named shapes to run (default: all)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(1, "benchmarks need a CUDA GPU\n")
    args.dtype = DTYPES[args.dtype]
    return args


def median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of fn over do_bench's default warm-up and repetitions."""
    from triton.testing import do_bench

    return do_bench(fn, return_mode="median")


def print_table(title: str, rows: list[tuple[str, int, dict[str, float]]]) -> None:
    """rows: (shape name, bytes the op must move, {implementation: ms}); the first implementation is the
    kernel, ratios are the other implementations' time over the kernel's."""
    device = torch.cuda.get_device_name()
    print(f"{title}  [{device}, torch {torch.__version__}]")
    impls = list(rows[0][2])
    header = f"{'shape':<26}" + "".join(f"{impl + ' ms':>16}{'GB/s':>9}" for impl in impls)
    header += "".join(f"{impls[0] + ' vs ' + impl:>26}" for impl in impls[1:])
    print(header)
    for name, nbytes, times in rows:
        line = f"{name:<26}"
        for impl in impls:
            line += f"{times[impl]:>16.3f}{nbytes / times[impl] / 1e6:>9.0f}"
        line += "".join(f"{times[impl] / times[impls[0]]:>25.2f}x" for impl in impls[1:])
        print(line)
    print()


def run_bench(description: str, shape_names: Sequence[str], title: str, time_shape: Callable, sweep: Callable) -> None:
    """A bench's command line: `--sweep` runs `sweep(name, dtype)` at each shape asked for, else the table of
    `time_shape(name, dtype)` rows (one row or a list of rows a shape), the GPU's cache emptied between shapes."""
    args = parse_args(description, list(shape_names), sweep=True)
    rows = []
    for name in args.shapes:
        if args.sweep:
            sweep(name, args.dtype)
        else:
            timed = time_shape(name, args.dtype)
            rows += timed if isinstance(timed, list) else [timed]
        torch.cuda.empty_cache()
    if rows:
        print_table(f"{title} ({args.dtype})", rows)
