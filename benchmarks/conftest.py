"""pytest-benchmark front end of the benchmark harness, ``lipkernels.benchmarking``.

``pytest benchmarks/ --benchmark-only`` collects the suites ``benchmarks/bench_*.py`` (a plain
``pytest`` at the repository root looks only in ``tests/``). Each suite module names its SUITE; the
tasks, the timer (wall clock on the CPU, CUDA events on a GPU), inputs, warm-up, round count and
rows all come from the harness, so the rows are the ones ``python -m lipkernels.bench`` gives.
pytest-benchmark runs the timed rounds; each row also lands in the benchmark's ``extra_info``
(so in ``--benchmark-json``), and with ``--bench-out DIR`` in the same JSON + Markdown results
files the CLI writes.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lipkernels import benchmarking as harness


def pytest_addoption(parser):
    group = parser.getgroup("lipkernels benchmarks")
    group.addoption("--bench-device", choices=("cpu", "cuda"),
                    help="device to benchmark (default: cuda when torch sees one, else cpu)")
    group.addoption("--bench-full", action="store_true",
                    help="the whole grid, as the CLI's --full (default: the reduced grid)")
    group.addoption("--bench-providers", metavar="NAMES",
                    help="comma-separated providers, as the CLI's --providers "
                         "(default: every one usable on the device)")
    group.addoption("--bench-budget", type=float, metavar="SECONDS",
                    help="time for the timed rounds of one measurement, as the CLI's --budget")
    group.addoption("--bench-out", metavar="DIR",
                    help="also write the JSON + Markdown results files (as the CLI) to DIR")


def pytest_collect_file(file_path, parent):
    # The suites are bench_*.py, outside pytest's test_*.py pattern. A file named on the command
    # line is collected by pytest itself already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@dataclasses.dataclass
class _Settings:
    device: str
    full: bool
    providers: list
    not_run: dict
    budget: harness.Budget
    rows: dict = dataclasses.field(default_factory=dict)  # suite -> rows, in run order


_SETTINGS = pytest.StashKey[_Settings]()


def pytest_configure(config):
    device = config.getoption("bench_device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device")
    requested = config.getoption("bench_providers")
    try:
        providers, not_run = harness.select_providers(
            device, requested.split(",") if requested else None)
    except ValueError as error:
        raise pytest.UsageError(f"--bench-providers: {error}") from None
    budget = harness.BUDGETS[device]
    if config.getoption("bench_budget"):
        budget = dataclasses.replace(budget, seconds=config.getoption("bench_budget"))
    config.stash[_SETTINGS] = _Settings(device, config.getoption("bench_full"), providers,
                                        not_run, budget)


def pytest_generate_tests(metafunc):
    if "bench_task" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[_SETTINGS]
    # The harness's clock is pytest-benchmark's timer, so its rounds are timed as the CLI's are;
    # the group puts the providers of one op, shape, dtype and mode side by side in its table.
    timer = harness.clock(settings.device)
    metafunc.parametrize("bench_task", [
        pytest.param(task, id=task.id, marks=pytest.mark.benchmark(group=task.group, timer=timer))
        for task in harness.tasks(metafunc.module.SUITE, settings.providers, settings.full)])


@pytest.fixture
def bench_row(benchmark, bench_task, pytestconfig):
    """Measure `bench_task` with pytest-benchmark and return its row (docs/design.md §5)."""
    settings = pytestconfig.stash[_SETTINGS]
    with harness.Measurement(bench_task, settings.device, settings.budget) as measurement:
        benchmark.pedantic(measurement.target, rounds=measurement.rounds, iterations=1)
        if benchmark.disabled:
            pytest.skip("--benchmark-disable: the op ran, but there is no timing to report")
        row = measurement.row(benchmark.stats.stats.median * 1e3)
    error = row[bench_task.case.op.error_field]
    # None: an op without an error measure (fft_conv2d, the yardstick of cached Cayley inference).
    assert error is None or math.isfinite(error), f"non-finite estimate: {row}"
    benchmark.extra_info.update(row)
    settings.rows.setdefault(bench_task.suite, []).append(row)
    return row


def pytest_sessionfinish(session):
    settings = session.config.stash.get(_SETTINGS, None)
    out = session.config.getoption("bench_out")
    if settings is None or not out:
        return
    for suite, rows in settings.rows.items():
        paths = harness.write_results(out, suite, settings.device, settings.full, rows,
                                      settings.not_run, budget=settings.budget)
        print("\nwritten: " + ", ".join(map(str, paths)))
