"""The benchmark harness of docs/design.md §5, shared by ``python -m lipkernels.bench`` and the
pytest-benchmark suites ``benchmarks/bench_*.py``.

Both front ends take everything from here, so they give the same rows: the grid (``tasks``), the
providers (``select_providers``), the inputs, warm-up and round count (``Measurement``), the clock
(``clock``), the row (``Measurement.row``) and the results files (``write_results``). The only
thing a front end does itself is the loop of timed rounds: the CLI runs ``Measurement.time_rounds``,
pytest-benchmark runs its own loop with ``clock(device)`` as its timer (start = clock(); call;
end = clock(), exactly what ``time_rounds`` does).

The package: ``core`` (what a suite declares, the shared seeded data, the error measures, the
timing of one task), ``providers`` (reference, reference-compile, the lipkernels backends, the peer
libraries), ``reporting`` (results files and tables) and ``suites`` (one module per suite and the
registry that lists them).

Row, as docs/design.md §5: {"op", "provider", "shape", "dtype", "mode", "median_ms", "peak_mem_mb",
"ortho_err"}. For the spectral-norm ops ``ortho_err`` is the relative error of the returned
sigma / bound against the exact value from ``torch.linalg.svdvals`` (float64, same data); for
``soc_exp`` and ``cayley_conv2d`` it is max over the batch of | ||y_b|| / ||x_b|| - 1 |. An op
whose error is not an orthogonality measure names its own field (``Op.error_field``):
``lipconvnet_train_step`` rows carry ``loss_err``, the relative error of the first step's loss.
"""

from .core import BUDGETS, Budget, Measurement, Task, clock
from .providers import COMPILING_PROVIDERS, PROVIDER_NAMES, select_providers
from .reporting import default_results_dir, device_name, summary, table, write_results
from .suites import OPS, SUITES, tasks

__all__ = ["BUDGETS", "COMPILING_PROVIDERS", "OPS", "PROVIDER_NAMES", "SUITES", "Budget",
           "Measurement", "Task", "clock", "default_results_dir", "device_name", "select_providers", "summary", "table", "tasks",
           "write_results"]
