"""The benchmark harness's registry: every suite module is registered, every pytest-benchmark
front end names a registered suite, and each suite's cases belong to its own ops."""

import ast
import pathlib
import pkgutil

import pytest

from lipkernels.benchmarking import OPS, SUITES, suites

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_suite_module_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(suites.__path__) if not m.name.startswith("_")}
    assert modules == set(suites.SUITE_MODULES) == set(SUITES)


def _front_end_suite(path: pathlib.Path) -> str:
    """The SUITE string a benchmarks/bench_*.py assigns (read, not imported: it needs the
    benchmarks conftest)."""
    (value,) = [node.value.value for node in ast.parse(path.read_text()).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "SUITE"]
    return value


def test_every_pytest_benchmark_suite_is_registered():
    assert {_front_end_suite(p) for p in BENCHMARKS.glob("bench_*.py")} == set(SUITES)


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
@pytest.mark.parametrize("name", list(SUITES))
def test_cases_are_of_the_suites_ops(name, full):
    suite = SUITES[name]
    cases = suite.cases(full)
    assert cases and {case.op for case in cases} == set(suite.ops)
    assert all(OPS[case.op.name] is case.op for case in cases)
