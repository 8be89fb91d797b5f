"""``python -m lipkernels.bench``: time the ops on the benchmark grid, print the table, and write
``<device-slug>-<YYYYMMDD>-<suite>.json`` plus its Markdown table per suite (docs/design.md §5).

By default it runs the providers usable on the device (reference, reference-compile on a small
subset, on a GPU reference-autotune on that subset and reference-graph, the built lipkernels backends except Triton on the CPU, installed peers) on a reduced grid
that finishes in a few minutes on a 2-core CPU; ``--full`` runs every seed shape. Grid, providers,
timing and rows come from ``lipkernels.benchmarking``, shared with ``pytest benchmarks/``.
Exit status: 0, or 1 when a measurement failed (the others are still written).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from . import benchmarking as harness

try:
    from tqdm import tqdm
except ImportError:  # a bare GPU machine may lack it (it is in the `bench` extra): plain lines
    tqdm = None


class _Lines:
    """The part of tqdm's interface used here, printing one line per item on stderr."""

    def __init__(self, items, **_):
        self._items, self._note = list(items), ""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def __iter__(self):
        for count, item in enumerate(self._items, 1):
            yield item
            print(f"[{count}/{len(self._items)}] {self._note}", file=sys.stderr, flush=True)

    def set_postfix_str(self, note, refresh=True):
        self._note = note

    @staticmethod
    def write(line):
        print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lipkernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=(*harness.SUITES, "all"), default=["all"],
                        help="the suites to run, in this order (default: all; each writes its "
                             "own files)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--full", action="store_true",
                        help="the whole grid: " + "; ".join(
                            suite.full_grid for suite in harness.SUITES.values()))
    parser.add_argument("--providers", nargs="+", metavar="NAME",
                        help=f"run only these (space- or comma-separated), from "
                             f"{', '.join(harness.PROVIDER_NAMES)} "
                             "(default: every one usable on the device)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write the results (default: "
                             f"{harness.default_results_dir()})")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time for the timed rounds of one measurement (default: "
                             + ", ".join(f"{d} {b.seconds}" for d, b in harness.BUDGETS.items())
                             + ")")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no measurement after this many seconds; the rest are counted "
                             "as skipped in the results (reference-compile and reference-autotune "
                             "run last)")
    parser.add_argument("--list", action="store_true", help="print the measurements and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    try:
        providers, not_run = harness.select_providers(
            device, args.providers and [n for arg in args.providers for n in arg.split(",") if n])
    except ValueError as error:
        parser.error(str(error))
    suites = list(harness.SUITES) if "all" in args.suite else list(dict.fromkeys(args.suite))
    budget = harness.BUDGETS[device]
    if args.budget:
        budget = dataclasses.replace(budget, seconds=args.budget)

    grid = [task for suite in suites for task in harness.tasks(suite, providers, args.full)]
    if args.list:
        print("\n".join(task.id for task in grid))
        print(f"{len(grid)} measurements", file=sys.stderr)
        return 0
    # The compiling baselines last: their compiles are the slowest part, and the least needed
    # when --time-limit cuts the run short.
    order = sorted(range(len(grid)),
                   key=lambda i: grid[i].provider.name in harness.COMPILING_PROVIDERS)
    deadline = time.monotonic() + args.time_limit if args.time_limit else float("inf")
    rows, failures, skipped = {}, {suite: [] for suite in suites}, {suite: 0 for suite in suites}
    with (tqdm or _Lines)(order, unit="measurement", dynamic_ncols=True) as bar:
        for index in bar:
            task = grid[index]
            bar.set_postfix_str(task.id, refresh=False)
            if time.monotonic() > deadline:
                skipped[task.suite] += 1
                continue
            try:
                with harness.Measurement(task, device, budget) as measurement:
                    rows[index] = measurement.row(statistics.median(measurement.time_rounds()))
            except Exception as error:  # one broken kernel must not hide the other results
                case = task.case
                failures[task.suite].append({
                    "op": case.op.name, "provider": task.provider.name, "shape": case.shape,
                    "mode": case.mode, "error": f"{type(error).__name__}: {error}"})
                bar.write(f"FAILED {task.id}: {type(error).__name__}: {error}")

    out = args.out or harness.default_results_dir()
    for suite in suites:
        suite_rows = [rows[i] for i in sorted(rows) if grid[i].suite == suite]
        paths = harness.write_results(out, suite, device, args.full, suite_rows, not_run,
                                      failures[suite], skipped[suite], budget)
        print(f"\n## {suite} on {harness.device_name(device)}\n")
        print(harness.table(suite_rows))
        print(harness.summary(suite_rows))
        print("written: " + ", ".join(map(str, paths)))
    if any(skipped.values()):
        print(f"warning: --time-limit reached, {sum(skipped.values())} measurements not run",
              file=sys.stderr)
    failed = sum(map(len, failures.values()))
    if failed:
        print(f"error: {failed} measurements failed (listed in the results files)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
