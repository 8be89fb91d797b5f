"""Every public entry of an op refuses the same bad input with the same error, naming the op and
the argument: the functional API and each torch.ops.lipkernels kernel op (C++ and Triton, forward
and backward, and cayley_conv2d's frequency core), which users and peer libraries may call
directly, bypassing the functional checks. The C++ checks (csrc/common/checks.h) mirror the
Python ones word for word and raise the same exception types."""

from __future__ import annotations

import pytest
import torch

import lipkernels
from lipkernels._checks import MAX_ITERS, MAX_TERMS
from helpers import require_backend


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _bad_power_iteration():
    W, u = _randn(3, 4), _randn(4)
    return {
        "weight rank": ("weight", (_randn(4), u, 1)),
        "weight dtype": ("weight", (torch.ones(3, 4, dtype=torch.int32), u, 1)),
        "u shape": ("u", (W, _randn(3), 1)),
        "u dtype": ("u", (W, u.double(), 1)),
        "iters": ("iters", (W, u, 0)),
    }


def _bad_conv_power_iteration():
    W, u = _randn(2, 3, 3, 3), _randn(1, 3, 5, 5)
    return {
        "weight rank": ("weight", (_randn(2, 3, 3), u, 1, 1, 1)),
        "weight dtype": ("weight", (torch.ones(2, 3, 3, 3, dtype=torch.int32), u, 1, 1, 1)),
        "u rank": ("u", (W, _randn(3, 5, 5), 1, 1, 1)),
        "u batch": ("u", (W, _randn(2, 3, 5, 5), 1, 1, 1)),
        "u channels": ("u", (W, _randn(1, 2, 5, 5), 1, 1, 1)),
        "u dtype": ("u", (W, u.double(), 1, 1, 1)),
        "iters": ("iters", (W, u, 0, 1, 1)),
        "stride": ("stride", (W, u, 1, 0, 1)),
        "stride pair": ("stride", (W, u, 1, (2, 0), 1)),
        "stride length": ("stride", (W, u, 1, [1, 1, 1], 1)),
        "padding": ("padding", (W, u, 1, 1, (0, -1))),
        "u image too small": ("u", (W, _randn(1, 3, 2, 5), 1, 1, 0)),
    }


def _bad_conv_spectral_bounds():
    W = _randn(2, 3, 3, 3)
    vectors = [_randn(9), _randn(9), _randn(27), _randn(18)]
    return {
        "weight rank": ("weight", (_randn(2, 3, 3), vectors, 1)),
        "vectors count": ("vectors", (W, vectors[:3], 1)),
        "vector length": ("vectors", (W, [_randn(8), *vectors[1:]], 1)),
        "iters": ("iters", (W, vectors, 0)),
    }


def _bad_soc_exp():
    x, S = _randn(1, 2, 4, 4), _randn(2, 2, 3, 3)
    return {
        "x rank": ("x", (_randn(2, 4, 4), S, 3, "exact")),
        "S shape": ("S", (x, _randn(3, 3, 3, 3), 3, "exact")),
        "S even kernel": ("S", (x, _randn(2, 2, 2, 2), 3, "exact")),
        "S dtype": ("S", (x, S.double(), 3, "exact")),
        "terms": ("terms", (x, S, 0, "exact")),
        "grad_mode": ("grad_mode", (x, S, 3, "approximate")),
    }


def _bad_max_min():
    return {
        "x rank": ("x", (_randn(4), "halves")),
        "x odd channels": ("x", (_randn(2, 3, 2), "halves")),
        "x dtype": ("x", (torch.ones(2, 4, dtype=torch.int32), "halves")),
        "pairing": ("pairing", (_randn(2, 4), "neighbours")),
    }


def _bad_householder():
    x, theta = _randn(2, 4, 3), _randn(2)
    return {
        "x rank": ("x", (_randn(4), theta)),
        "x odd channels": ("x", (_randn(2, 3, 2), theta)),
        "theta shape": ("theta", (x, _randn(3))),
        "theta dtype": ("theta", (x, theta.double())),
    }


def _bad_cayley():
    return {
        "W rank": ("W", (_randn(4),)),
        "W dtype": ("W", (torch.ones(3, 3, dtype=torch.int32),)),
    }


def _bad_bjorck():
    W = _randn(4, 3)
    return {
        "W rank": ("W", (_randn(4), 2, 0.5, 1)),
        "iters": ("iters", (W, 0, 0.5, 1)),
        "order": ("order", (W, 2, 0.5, 0)),
        "order above 4": ("order", (W, 2, 0.5, 5)),
        "beta": ("beta", (W, 2, 1.0, 1)),
        "beta of order 2": ("beta", (W, 2, 0.3, 2)),
    }


def _bad_bcop_filter():
    M = _randn(3, 4, 4)
    return {
        "matrices rank": ("matrices", (M[0], 4, 4)),
        "matrices even count": ("matrices", (M[:2], 4, 4)),
        "matrices not square": ("matrices", (M[:, :, :3], 4, 3)),
        "matrices channels": ("matrices", (M, 4, 6)),
        "matrices odd channels": ("matrices", (M[:, :3, :3], 3, 2)),
        "in_channels": ("in_channels", (M, 0, 4)),
        "out_channels": ("out_channels", (M, 4, -2)),
    }


def _bad_power_iteration_backward():
    grad, u, v = _randn(2), _randn(2, 4), _randn(2, 3)
    return {
        "u dtype": ("u", (grad, torch.ones(2, 4, dtype=torch.int32), v)),
        "v batch": ("v", (grad, u, _randn(3, 3))),
        "v dtype": ("v", (grad, u, v.double())),
        "grad_sigma shape": ("grad_sigma", (_randn(3), u, v)),
    }


def _bad_conv_power_iteration_backward():
    grad, u, v = _randn(()), _randn(1, 3, 5, 5), _randn(1, 2, 3, 3)
    return {
        "u rank": ("u", (grad, _randn(3, 5, 5), v, (3, 3), 1, 0)),
        "u batch": ("u", (grad, _randn(2, 3, 5, 5), v, (3, 3), 1, 0)),
        "kernel_size": ("kernel_size", (grad, u, v, (3, 0), 1, 0)),
        "stride": ("stride", (grad, u, v, (3, 3), 0, 0)),
        "padding": ("padding", (grad, u, v, (3, 3), 1, -1)),
        "u image too small": ("u", (grad, u, v, (6, 3), 1, 0)),
        "v rank": ("v", (grad, u, v[0], (3, 3), 1, 0)),
        "v shape": ("v", (grad, u, v, (3, 3), 2, 0)),
        "v dtype": ("v", (grad, u, v.double(), (3, 3), 1, 0)),
        "grad_sigma shape": ("grad_sigma", (_randn(1), u, v, (3, 3), 1, 0)),
        "grad_sigma dtype": ("grad_sigma", (grad.double(), u, v, (3, 3), 1, 0)),
    }


def _bad_conv_spectral_bounds_backward():
    grad = _randn(4)
    vectors = [_randn(9), _randn(9), _randn(27), _randn(18)]
    left = [_randn(6), _randn(6), _randn(2), _randn(3)]
    shape = [2, 3, 3, 3]
    return {
        "weight_shape": ("weight_shape", (grad, vectors, left, [2, 3, 3])),
        "grad_bounds shape": ("grad_bounds", (_randn(3), vectors, left, shape)),
        "vector length": ("vectors", (grad, [_randn(8), *vectors[1:]], left, shape)),
        "left vector length": ("left_vectors", (grad, vectors, [_randn(5), *left[1:]], shape)),
        "left vector dtype": ("left_vectors", (grad, vectors, [left[0].double(), *left[1:]],
                                               shape)),
    }


def _bad_soc_exp_backward():
    grad, S, start = _randn(1, 2, 4, 4), _randn(2, 2, 3, 3), _randn(1, 2, 4, 4)
    return {
        "grad_y rank": ("grad_y", (_randn(2, 4, 4), S, start, [], 2, "exact")),
        "S shape": ("S", (grad, _randn(3, 3, 3, 3), start, [], 2, "exact")),
        "start shape": ("start", (grad, S, _randn(1, 2, 4, 3), [], 2, "exact")),
        "terms": ("terms", (grad, S, start, [], 0, "exact")),
        "grad_mode": ("grad_mode", (grad, S, start, [], 2, "approximate")),
    }


def _bad_max_min_backward():
    grad, mask = _randn(2, 4, 3), torch.ones(2, 2, 3, dtype=torch.bool)
    return {
        "grad_y odd channels": ("grad_y", (_randn(2, 3, 3), mask, "halves")),
        "mask dtype": ("mask", (grad, mask.float(), "halves")),
        "mask shape": ("mask", (grad, torch.ones(2, 4, 3, dtype=torch.bool), "halves")),
        "pairing": ("pairing", (grad, mask, "neighbours")),
    }


def _bad_householder_backward():
    grad, x, theta = _randn(2, 4, 3), _randn(2, 4, 3), _randn(2)
    return {
        "grad_y odd channels": ("grad_y", (_randn(2, 3, 3), x, theta)),
        "x shape": ("x", (grad, _randn(2, 4, 2), theta)),
        "x dtype": ("x", (grad, x.double(), theta)),
        "theta shape": ("theta", (grad, x, _randn(3))),
    }


def _bad_cayley_backward():
    W, X = _randn(4, 3), _randn(3, 3)
    return {
        "grad_Q shape": ("grad_Q", (_randn(4, 2), X, W)),
        "X shape": ("X", (_randn(4, 3), _randn(2, 2), W)),
        "W wide": ("W", (_randn(3, 4), X, W.mT)),
    }


def _bad_bjorck_backward():
    W, grad = _randn(4, 3), _randn(4, 3)
    iterates, grams = _randn(1, 4, 3), _randn(2, 3, 3)
    return {
        "grad_Q shape": ("grad_Q", (_randn(4, 2), W, iterates, grams, 2, 0.5, 1)),
        "W wide": ("W", (grad.mT, W.mT, iterates, grams, 2, 0.5, 1)),
        "iterates count": ("iterates", (grad, W, iterates[:0], grams, 2, 0.5, 1)),
        "grams count": ("grams", (grad, W, iterates, grams[:1], 2, 0.5, 1)),
        "grams shape": ("grams", (grad, W, iterates, _randn(2, 4, 3), 2, 0.5, 1)),
        "iterates dtype": ("iterates", (grad, W, iterates.double(), grams, 2, 0.5, 1)),
    }


def _frequency_problem():
    response = torch.randn(5, 3, 2, dtype=torch.complex64)
    return response, torch.randn(5, 2, 4, dtype=torch.complex64)


def _bad_cayley_frequency_product():
    response, spectrum = _frequency_problem()
    return {
        "response dtype": ("response", (response.real.contiguous(), spectrum)),
        "response rank": ("response", (response[0], spectrum)),
        "spectrum shape": ("spectrum", (response, spectrum.mT)),
        "spectrum dtype": ("spectrum", (response, spectrum.to(torch.complex128))),
    }


def _bad_cayley_frequency_product_backward():
    response, spectrum = _frequency_problem()
    grad = torch.randn(5, 3, 4, dtype=torch.complex64)
    inverse = torch.randn(5, 2, 2, dtype=torch.complex64)
    solved = torch.randn(5, 2, 4, dtype=torch.complex64)
    return {
        "grad_output shape": ("grad_output", (grad[:, :2], response, spectrum, inverse, solved)),
        "inverse shape": ("inverse", (grad, response, spectrum, inverse[:, :1], solved)),
        "solved shape": ("solved", (grad, response, spectrum, inverse, solved[..., :1])),
        "response dtype": ("response", (grad, response.real.contiguous(), spectrum, inverse,
                                        solved)),
    }


def _bad_bcop_filter_backward():
    M, grad, projectors = _randn(5, 4, 4), _randn(2, 4, 3, 3), _randn(4, 4, 4)
    iterates = [_randn(2, 1, 2, 4), _randn(2, 2, 2, 4), _randn(3, 2, 2, 4)]
    return {
        "grad_weight shape": ("grad_weight", (grad[:, :, :2], M, projectors, iterates, 4, 2)),
        "matrices even count": ("matrices", (grad, M[:4], projectors, iterates, 4, 2)),
        "projectors count": ("projectors", (grad, M, projectors[:3], iterates, 4, 2)),
        "projectors dtype": ("projectors", (grad, M, projectors.double(), iterates, 4, 2)),
        "iterates count": ("iterates", (grad, M, projectors, iterates[:2], 4, 2)),
        "iterates shape": ("iterates", (grad, M, projectors, [iterates[1], *iterates[1:]], 4,
                                        2)),
    }


def _bad_convex_potential():
    x, W, b, scale = _randn(2, 4, 5, 5), _randn(3, 4, 3, 3), _randn(3), _randn(3)
    return {
        "weight rank": ("weight", (x, _randn(3, 4, 3), b, scale)),
        "weight even kernel": ("weight", (x, _randn(3, 4, 2, 3), b, scale)),
        "weight dtype": ("weight", (x, W.double(), b, scale)),
        "x rank": ("x", (_randn(2, 4), W, b, scale)),
        "x channels": ("x", (_randn(2, 5, 5, 5), W, b, scale)),
        "bias shape": ("bias", (x, W, _randn(4), scale)),
        "scale shape": ("scale", (x, W, b, _randn(2))),
        "scale dtype": ("scale", (x, W, b, scale.double())),
    }


def _bad_convex_potential_backward():
    grad, x, W = _randn(2, 4, 5, 5), _randn(2, 4, 5, 5), _randn(3, 4, 3, 3)
    scale, r = _randn(()), _randn(2, 3, 5, 5)
    return {
        "grad_z channels": ("grad_z", (_randn(2, 5, 5, 5), x, W, scale, r)),
        "x shape": ("x", (grad, _randn(2, 4, 5, 4), W, scale, r)),
        "weight matrix with images": ("grad_z", (grad, x, W[:, :, 0, 0], scale, r)),
        "scale shape": ("scale", (grad, x, W, _randn(4), r)),
        "activation shape": ("activation", (grad, x, W, scale, r[:, :2])),
        "activation dtype": ("activation", (grad, x, W, scale, r.double())),
    }


def _bad_aol_rescaling():
    W, log_q = _randn(3, 4, 3, 2), _randn(4)
    return {
        "weight rank": ("weight", (_randn(3, 4, 3), log_q)),
        "weight vector": ("weight", (_randn(4), None)),
        "log_q shape": ("log_q", (W, _randn(3))),
        "log_q rank": ("log_q", (W, _randn(4, 1))),
        "log_q dtype": ("log_q", (W, log_q.double())),
    }


def _bad_aol_rescaling_backward():
    W, grad = _randn(2, 4, 3, 3), _randn(4)
    d, gram, signs = _randn(4), _randn(4, 4), torch.ones(4, 4, 5, 5, dtype=torch.int8)
    return {
        "weight rank": ("weight", (grad, W[0], None, d, gram, signs)),
        "log_q shape": ("log_q", (grad, W, _randn(2), d, gram, signs)),
        "grad_d shape": ("grad_d", (_randn(2), W, None, d, gram, signs)),
        "d dtype": ("d", (grad, W, None, d.double(), gram, signs)),
        "absolute_gram shape": ("absolute_gram", (grad, W, None, d, gram[:2], signs)),
        "signs dtype": ("signs", (grad, W, None, d, gram, signs.float())),
        "signs shape": ("signs", (grad, W, None, d, gram, signs[:, :, :3, :3])),
    }


# The ops with no functional entry of their own, {op: bad inputs}: the backward ops and the
# frequency-domain core of cayley_conv2d.
KERNEL_ONLY_OPS = {
    "power_iteration_backward": _bad_power_iteration_backward,
    "conv_power_iteration_backward": _bad_conv_power_iteration_backward,
    "conv_spectral_bounds_backward": _bad_conv_spectral_bounds_backward,
    "soc_exp_backward": _bad_soc_exp_backward,
    "max_min_backward": _bad_max_min_backward,
    "householder_backward": _bad_householder_backward,
    "cayley_backward": _bad_cayley_backward,
    "cayley_frequency_product": _bad_cayley_frequency_product,
    "cayley_frequency_product_backward": _bad_cayley_frequency_product_backward,
    "bjorck_backward": _bad_bjorck_backward,
    "bcop_filter_backward": _bad_bcop_filter_backward,
    "aol_rescaling_backward": _bad_aol_rescaling_backward,
    "convex_potential_backward": _bad_convex_potential_backward,
}

# op: (bad inputs {case: (argument named, args)}, the functional call on those args)
OPS = {
    "power_iteration": (_bad_power_iteration, lipkernels.power_iteration),
    "conv_power_iteration": (_bad_conv_power_iteration, lipkernels.conv_power_iteration),
    "conv_spectral_bounds": (_bad_conv_spectral_bounds,
                             lambda weight, vectors, iters: lipkernels.conv_spectral_bounds(
                                 weight, iters, vectors)),
    "soc_exp": (_bad_soc_exp, lipkernels.soc_exp),
    "max_min": (_bad_max_min, lipkernels.max_min),
    "householder": (_bad_householder, lipkernels.householder),
    "cayley": (_bad_cayley, lipkernels.cayley),
    "bjorck": (_bad_bjorck, lambda W, iters, beta, order: lipkernels.bjorck(W, iters, beta, order)),
    "bcop_filter": (_bad_bcop_filter, lipkernels.bcop_filter),
    "aol_rescaling": (_bad_aol_rescaling, lipkernels.aol_rescaling),
    "convex_potential": (_bad_convex_potential, lipkernels.convex_potential),
}

CASES = [(op, case) for op, (bad, _) in OPS.items() for case in bad()]


KERNEL_ONLY_CASES = [(op, case) for op, bad in KERNEL_ONLY_OPS.items() for case in bad()]


def _kernel_op(op: str, backend: str):
    require_backend("cpu", backend)
    name = op if backend == "cpp" else f"{op}_triton"
    if not hasattr(torch.ops.lipkernels, name):
        pytest.skip(f"{op} has no {backend} kernel")
    return getattr(torch.ops.lipkernels, name)


def _refusal(call, op: str, argument: str, args) -> tuple[type, str]:
    """The exception type and first message line of call(*args), which must name the op and the
    argument."""
    with pytest.raises((RuntimeError, TypeError, ValueError)) as info:
        call(*args)
    message = str(info.value).splitlines()[0]
    assert message.startswith(f"{op}:") or message.startswith(f"lipkernels.{op}:"), message
    assert argument in message, message
    return type(info.value), message


@pytest.mark.parametrize("entry", ["functional", "cpp", "triton"])
@pytest.mark.parametrize("op,case", CASES, ids=[f"{op}-{case}" for op, case in CASES])
def test_every_entry_refuses_bad_input_naming_op_and_argument(op, case, entry):
    """Every entry refuses alike: the same exception type and message as the functional API."""
    argument, args = OPS[op][0]()[case]
    expected = _refusal(OPS[op][1], op, argument, args)
    if entry != "functional":
        assert _refusal(_kernel_op(op, entry), op, argument, args) == expected


# Cases on what the C++ forward keeps and the Triton one does not (bcop_filter's tap stacks,
# bjorck's iterates and Gram matrices: the Triton backward ops take none), where the two ops
# refuse in words of their own: {case: the argument the Triton op names}.
KEPT_BY_CPP_ONLY = {("bcop_filter_backward", "iterates count"): "iterates",
                    ("bcop_filter_backward", "iterates shape"): "iterates",
                    ("bjorck_backward", "iterates count"): "grams",
                    ("bjorck_backward", "grams count"): "iterates",
                    ("bjorck_backward", "grams shape"): "iterates",
                    ("bjorck_backward", "iterates dtype"): "iterates"}


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("op,case", KERNEL_ONLY_CASES,
                         ids=[f"{op}-{case}" for op, case in KERNEL_ONLY_CASES])
def test_every_kernel_only_op_refuses_bad_input_naming_op_and_argument(op, case, backend):
    """The C++ and Triton kernel ops refuse alike: the same exception type and message (the
    Triton ones run the Python checks of lipkernels/ops/<op>.py), but for what only the C++
    forward keeps, which the Triton op refuses naming the kept tensor it takes empty."""
    argument, args = KERNEL_ONLY_OPS[op]()[case]
    if backend == "triton" and (op, case) in KEPT_BY_CPP_ONLY:
        _refusal(_kernel_op(op, backend), op, KEPT_BY_CPP_ONLY[op, case], args)
        return
    refusal = _refusal(_kernel_op(op, backend), op, argument, args)
    if backend == "triton":
        assert refusal == _refusal(_kernel_op(op, "cpp"), op, argument, args)


@pytest.mark.parametrize("name,limit", [("iters", MAX_ITERS), ("terms", MAX_TERMS)])
def test_count_limits_agree_between_python_and_cpp(name, limit):
    """The C++ ops bound the counts by their own copy of MAX_ITERS and MAX_TERMS: one over the
    limit gives the functional API's error, the limit itself none."""
    x, S = _randn(1, 2, 4, 4), _randn(2, 2, 3, 3)
    W, u = _randn(3, 4), _randn(4)
    op, functional, args = {
        "iters": ("power_iteration", lipkernels.power_iteration, lambda n: (W, u, n)),
        "terms": ("soc_exp", lipkernels.soc_exp, lambda n: (x, S, n, "exact")),
    }[name]
    expected = _refusal(functional, op, name, args(limit + 1))
    assert _refusal(_kernel_op(op, "cpp"), op, name, args(limit + 1)) == expected
    if name == "terms":  # a million power iterations would take a while
        _kernel_op(op, "cpp")(*args(limit))
