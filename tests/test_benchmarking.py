"""The benchmark harness's registry: every suite module is registered, every pytest-benchmark
front end names a registered suite, and each suite's cases belong to its own ops; the hand-fused,
graph-captured and autotuned baselines compute what the reference does, on the cases they
cover."""

import ast
import pathlib
import pkgutil
import unittest.mock

import pytest

import torch

from lipkernels import reference
from lipkernels.benchmarking import OPS, SUITES, suites
from lipkernels.benchmarking import providers as provider_module
from lipkernels.benchmarking.core import Measurement, Task
from lipkernels.benchmarking.providers import (AutotunedReference, CompiledReference,
                                               GraphedReference, HandFusedReference, Reference,
                                               select_providers)

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


def test_hand_fused_soc_exp_is_the_reference_series():
    """reference-fused's soc_exp (filters pre-divided by i, the sum accumulated in place): the
    reference's output and exact gradients, in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    S = (0.3 * reference.skew(torch.randn(4, 4, 3, 3, dtype=torch.float64,
                                          generator=generator))).requires_grad_()
    fused = HandFusedReference().implementation(OPS["soc_exp"])
    for terms in (1, 2, 6):
        y, expected = fused(x, S, terms, "exact"), reference.soc_exp(x, S, terms)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        weights = torch.randn(y.shape, dtype=torch.float64, generator=generator)
        grads = torch.autograd.grad((y * weights).sum(), (x, S), allow_unused=True,
                                    materialize_grads=True)
        expected_grads = torch.autograd.grad((expected * weights).sum(), (x, S),
                                             allow_unused=True, materialize_grads=True)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_hand_fused_baseline_runs_the_exact_soc_exp_cases():
    """reference-fused is a default provider; it runs soc_exp's fwd and exact fwd+bwd rows, not
    its fast-gradient rows, and nothing of the suites whose ops declare no hand fusion."""
    provider = HandFusedReference()
    assert "reference-fused" in [p.name for p in select_providers("cpu")[0]]
    for name, suite in SUITES.items():
        for case in suite.cases(True):
            expected = name == "soc_exp" and not case.shape.endswith("-fast")
            assert provider.covers(case, True) == expected, (name, case.shape, case.mode)


GRAPHED_OPS = {"soc_exp", "power_iteration", "conv_spectral_bounds", "fantastic_four", "bjorck"}


def test_graph_baseline_runs_on_a_gpu_only():
    """reference-graph (the reference replayed from a CUDA graph) is not run on the CPU, with the
    reason, and asking for it there is an error that says why."""
    providers, reasons = select_providers("cpu")
    assert "reference-graph" not in [p.name for p in providers]
    assert reasons["reference-graph"] == "CUDA graphs need a GPU (device cpu)"
    with pytest.raises(ValueError, match="reference-graph: CUDA graphs need a GPU"):
        select_providers("cpu", ["reference-graph"])


def test_graph_baseline_covers_the_ops_without_host_synchronisation():
    """The ops whose reference is a loop of kernels with no host sync are captured (by
    reference-graph, and reference-fused's hand fusion where there is one); the others (linear
    solves and SVDs that check their results on the host, Python-float bounds) are not."""
    assert {name for name, op in OPS.items() if op.graphs} == GRAPHED_OPS
    graphed, fused, eager = GraphedReference(), HandFusedReference(), Reference()
    for suite in SUITES.values():
        for case in suite.cases(True):
            assert graphed.covers(case, True) == (case.op.name in GRAPHED_OPS)
            assert graphed.graphs(case.op) and not eager.graphs(case.op)
            assert fused.graphs(case.op) == (case.op.name in GRAPHED_OPS)


def test_autotuned_baseline_runs_on_a_gpu_only_on_the_compiled_cases():
    """reference-autotune (torch.compile's max-autotune) is not run on the CPU, with the reason,
    asking for it there is an error that says why; it covers the cases reference-compile does
    and compiles for static shapes in max-autotune mode."""
    providers, reasons = select_providers("cpu")
    assert "reference-autotune" not in [p.name for p in providers]
    assert reasons["reference-autotune"].startswith("max-autotune tunes GPU kernels (device cpu)")
    with pytest.raises(ValueError, match="reference-autotune: max-autotune tunes GPU kernels"):
        select_providers("cpu", ["reference-autotune"])
    autotuned, compiled = AutotunedReference(), CompiledReference()
    for suite in SUITES.values():
        for case in suite.cases(True):
            assert autotuned.covers(case, True) == compiled.covers(case, True)
    provider_module._autotuned_reference.cache_clear()
    try:
        with unittest.mock.patch.object(torch, "compile") as compile_:
            autotuned.implementation(OPS["soc_exp"])
    finally:
        provider_module._autotuned_reference.cache_clear()
    compile_.assert_called_once_with(reference.soc_exp, mode="max-autotune", dynamic=False)


@pytest.mark.gpu
def test_autotuned_baseline_matches_the_reference():
    """On a GPU, reference-autotune computes the reference's output (TF32 convolutions aside)."""
    suite = SUITES["soc_exp"]
    case = next(c for c in suite.cases(True) if AutotunedReference().covers(c, True)
                and c.mode == "fwd")
    with Measurement(Task(suite.name, case, AutotunedReference()), "cuda") as measurement:
        autotuned = measurement.target().clone()
    with Measurement(Task(suite.name, case, Reference()), "cuda") as measurement:
        torch.testing.assert_close(autotuned, measurement.target(), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GRAPHED_OPS))
def test_graph_baseline_replays_the_reference(name):
    """On a GPU, each timed call of reference-graph replays the captured call: its output equals
    an eager call's (the same kernels on the same inputs), forward and forward+backward."""
    suite = next(s for s in SUITES.values() if any(op.name == name for op in s.ops))
    for mode in ("fwd", "fwd+bwd"):
        case = next(c for c in suite.cases(False) if c.op.name == name and c.mode == mode)
        task = Task(suite.name, case, GraphedReference())
        with Measurement(task, "cuda") as measurement:
            assert measurement.target is not measurement._eager_target
            replayed = measurement.target().clone()
            torch.testing.assert_close(replayed, measurement._eager_target(), rtol=0, atol=0)
            assert measurement.time_rounds()
