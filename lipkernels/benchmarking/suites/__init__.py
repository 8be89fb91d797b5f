"""The registry of benchmark suites: one module per suite, each declaring its `SUITE`
(`core.Suite`: its ops, grid and notes). Adding a suite is adding its module and its name here."""

from __future__ import annotations

import importlib

from ..core import Task

# The suites in the order `--suite all` runs them.
SUITE_MODULES = ("power_iteration", "conv_spectral_bounds", "soc_exp", "lipconvnet",
                 "lipschitz_bound", "conv_singular_values", "cayley_conv2d", "bjorck", "bcop",
                 "convex_potential")

SUITES = {suite.name: suite for suite in (importlib.import_module(f"{__name__}.{module}").SUITE
                                          for module in SUITE_MODULES)}
OPS = {op.name: op for suite in SUITES.values() for op in suite.ops}


def tasks(suite: str, providers: list, full: bool) -> list[Task]:
    """(case, provider) pairs of `suite` in run order: every case on every provider covering it."""
    return [Task(suite, case, provider) for case in SUITES[suite].cases(full)
            for provider in providers if provider.covers(case, full)]
