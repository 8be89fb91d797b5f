"""Reporting: the results files of a run (JSON with its environment header, and a Markdown table
beside it) and the Markdown tables the CLI prints."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

import torch

import lipkernels

from .core import BUDGETS, Budget
from .suites import OPS, SUITES

TIMING_NOTE = {
    "cpu": ("wall clock (time.perf_counter) around each call; median of the timed rounds (at least "
            "{b.min_rounds}, at most {b.max_rounds}, about {b.seconds} s of them) after an untimed "
            "first call and a timed warm-up"),
    "cuda": ("CUDA events around each call (recorded on the current stream, synchronised after the "
             "call); median of the timed rounds (at least {b.min_rounds}, at most {b.max_rounds}, "
             "about {b.seconds} s of them) after an untimed first call and a timed warm-up"),
}


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} threads"


def device_slug(device: str) -> str:
    name = device_name(device).split(",")[0]
    return _slug(name) if device == "cuda" else "cpu-" + _slug(name)


REPO_ROOT = Path(lipkernels.__file__).resolve().parents[1]


def default_results_dir() -> Path:
    """benchmarks/results/ of the source checkout lipkernels runs from, else of the working
    directory."""
    checkout = REPO_ROOT / "benchmarks"
    return (checkout if checkout.is_dir() else Path("benchmarks")) / "results"


def _commit() -> str | None:
    """HEAD of the checkout, with "+dirty" when the working tree differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def environment(device: str) -> dict:
    """The header of a results file (docs/design.md §5)."""
    info = lipkernels.build_info()
    return {"device": device_name(device), "torch": torch.__version__, "triton": info["triton"],
            "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit()}


def write_results(out_dir, suite: str, device: str, full: bool, rows: list[dict],
                  not_run: dict[str, str], failures: list[dict] = (), skipped_for_time: int = 0,
                  budget: Budget | None = None) -> tuple[Path, Path]:
    """Write <device-slug>-<YYYYMMDD>-<suite>.json and the Markdown table beside it."""
    env = environment(device)
    report = {**env, "rows": rows, "suite": suite, "device_type": device,
              "grid": "full" if full else "default",
              "timing": TIMING_NOTE[device].format(b=budget or BUDGETS[device]),
              "not_run": not_run, "failures": list(failures), "skipped_for_time": skipped_for_time,
              "build_info": lipkernels.build_info(),
              # Timings on a CPU shared with other work are slower and noisier; this says how busy.
              "load_average": ([round(x, 2) for x in os.getloadavg()]
                               if device == "cpu" and hasattr(os, "getloadavg") else None),
              "cpu_count": os.cpu_count()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(device)}-{env['date'][:10].replace('-', '')}-{suite}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def speedups(rows: list[dict]) -> list[float | None]:
    """reference median / row median for each row, from the reference row of the same op, shape,
    dtype and mode in the same list (one run): None where there is none."""
    def key(row):
        return row["op"], row["shape"], row["dtype"], row["mode"]

    ref = {key(r): r["median_ms"] for r in rows if r["provider"] == "reference"}
    return [ref[key(r)] / r["median_ms"] if key(r) in ref else None for r in rows]


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def error_field(row: dict) -> str:
    """The name of the row's error column: its op's (`Op.error_field`)."""
    return OPS[row["op"]].error_field


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with the speed-up over the reference of the same run. The
    error column is headed by the rows' error field(s) (ortho_err unless an op names another)."""
    errors = " / ".join(dict.fromkeys(map(error_field, rows))) or "ortho_err"
    lines = ["| op | shape | dtype | mode | provider | median ms | speed-up vs reference | "
             f"peak MB | {errors} |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r, speedup in zip(rows, speedups(rows), strict=True):
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['median_ms']:.4g} | {_fmt(speedup, '.2f')} | "
                     f"{_fmt(r['peak_mem_mb'], '.3g')} | {_fmt(r[error_field(r)], '.2e')} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    """Per provider, op, iteration or term count (the shape's "-T", with "-fast" for the fast
    gradient; "-" for ops without one) and mode: the smallest, geometric-mean and largest
    speed-up."""
    groups: dict[tuple, list] = {}
    for r, speedup in zip(rows, speedups(rows), strict=True):
        if speedup is not None and r["provider"] != "reference":
            iters = r["shape"].rsplit("-T", 1)[1] if "-T" in r["shape"] else "-"
            groups.setdefault((r["provider"], r["op"], iters, r["mode"]), []).append((speedup, r))
    lines = ["| provider | op | iters | mode | rows | min speed-up (at) | geomean | max speed-up |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for (provider, op, iters, mode), items in groups.items():
        low, at = min(items, key=lambda item: item[0])
        geomean = math.exp(statistics.fmean(math.log(s) for s, _ in items))
        lines.append(f"| {provider} | {op} | {iters} | {mode} | {len(items)} | {low:.2f} "
                     f"({at['shape']}) | {geomean:.2f} | "
                     f"{max(s for s, _ in items):.2f} |")
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    rows, suite = report["rows"], SUITES[report["suite"]]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    gpu = report["device_type"] == "cuda"
    lines = [
        f"# lipkernels benchmarks: {report['suite']} on {report['device']}",
        "",
        f"- date {report['date']}, commit `{report['commit']}`, torch {report['torch']}, "
        f"triton {report['triton']}, CUDA {report['cuda']}",
        f"- grid: {report['grid']} ({'all seed shapes' if report['grid'] == 'full' else 'reduced'}"
        "; `python -m lipkernels.bench --full` runs the whole grid)",
        f"- providers: {', '.join(providers)}",
        "- not run: " + ("; ".join(f"{name}: {why}" for name, why in report["not_run"].items())
                         or "none"),
        f"- median_ms: {report['timing']}",
        "- speed-up vs reference: the reference row's median over this row's median, same op, "
        "shape, dtype and mode, this run only",
        "- peak MB: " + ("CUDA memory allocated at the peak of one call beyond the tensors already "
                         "resident (the inputs), from torch.cuda.max_memory_allocated" if gpu else
                         "not measured on the CPU (null): torch's CPU allocator keeps no peak "
                         "statistics and the process RSS high-water mark is not per call"),
        *suite.notes,
    ]
    if suite.compile_note and ("reference-compile" in providers or suite.compile_note_always):
        lines.append(suite.compile_note)
    if report["load_average"] is not None:
        lines.append(f"- CPU load average (1, 5, 15 min) when written: {report['load_average']} "
                     f"on {report['cpu_count']} cores (above the core count, other processes "
                     "competed for the cores: timings slower and noisier)")
    if report["skipped_for_time"]:
        lines.append(f"- **truncated**: {report['skipped_for_time']} measurements not run "
                     "(--time-limit reached)")
    if report["failures"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {f['op']} {f['shape']} {f['mode']} {f['provider']}: {f['error']}"
                  for f in report["failures"]]
    lines += ["", "## Speed-up summary", "", summary(rows), "## Rows", "", table(rows)]
    return "\n".join(lines)
