"""torch.func transforms, forward-mode AD and double backward (docs/design.md §3.6: nothing
silently wrong under torch.func).

The rule (`lipkernels._backend`): under jvp / vmap / grad / jacrev / forward-mode AD, the
reference gives the right derivative, `auto` runs the reference, and an explicit kernel backend
raises an error naming the op, the backend and the transform. Double backward is right on every
backend (the kernel ops' backward switches to differentiable torch ops when a graph of the
gradient is asked for), except soc_exp's approximate "fast" gradient, which raises when
differentiated again. Oracles: central finite differences (jvp, forward AD, double backward,
forward-over-reverse), a Python loop (vmap), torch.autograd.functional.jacobian and autograd.grad
(jacrev, grad). Ops whose gradient treats power-iteration vectors as constants (d sigma = v^T dW u)
are checked at a converged iteration for first derivatives and against that convention for
second ones. Then the nn layers under jacrev / vmap / grad, as a Lipschitz-constant estimator
(deel-torchlip's evaluate_lip_const) calls them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import lipkernels
from helpers import ALL_TARGETS, filter_with_spectral_gap, matrix_with_spectrum, require_backend
from lipkernels.ops.aol_rescaling import KERNELS as AOL_RESCALING_KERNELS
from lipkernels.ops.bcop_filter import KERNELS as BCOP_FILTER_KERNELS
from lipkernels.ops.bjorck import KERNELS as BJORCK_KERNELS
from lipkernels.ops.cayley import KERNELS as CAYLEY_KERNELS
from lipkernels.ops.cayley_conv2d import KERNELS as CAYLEY_CONV2D_KERNELS
from lipkernels.ops.conv_power_iteration import KERNELS as CONV_POWER_ITERATION_KERNELS
from lipkernels.ops.conv_spectral_bounds import KERNELS as BOUNDS_KERNELS
from lipkernels.ops.convex_potential import KERNELS as CONVEX_POTENTIAL_KERNELS
from lipkernels.ops.frequency_power_iteration import KERNELS as FREQUENCY_KERNELS
from lipkernels.ops.householder import KERNELS as HOUSEHOLDER_KERNELS
from lipkernels.ops.max_min import KERNELS as MAX_MIN_KERNELS
from lipkernels.ops.power_iteration import KERNELS as POWER_ITERATION_KERNELS
from lipkernels.ops.soc_exp import KERNELS as SOC_EXP_KERNELS
from lipkernels._conventions import initial_vectors
from lipkernels.reference.soc_exp import FAST_DOUBLE_BACKWARD

DTYPE = torch.float64
EPS = 1e-6  # central differences in float64: error ~ EPS^2 f''' + 1e-16 / EPS

# Every backend, plus `auto`, which must pick the reference under a transform.
TARGETS = [*ALL_TARGETS, pytest.param("cpu", "auto", id="cpu-auto")]

# Power iterations that converge past float64 rounding on the gapped inputs below, so that the
# derivative with u, v held constant is the derivative of the function (finite differences).
CONVERGED = 40


@dataclass
class Case:
    """One public op as a function of its differentiable inputs.

    build(device, iters) -> (fn, primals); `iters` is used by the power-iteration ops only.
    kernels: the op's KERNELS (explicit kernel backends raise under transforms), or None for ops
    that run the reference on every backend. constant_vectors: the gradient treats
    power-iteration vectors as constants, so it is constant in the primals. fast: soc_exp's
    approximate gradient, which has no double backward.
    """

    op: str
    build: Callable
    kernels: dict | None = None
    constant_vectors: bool = False
    fast: bool = False


def _randn(*shape, device):
    return torch.randn(*shape, dtype=DTYPE, device=device)


def _power_iteration(device, iters):
    W = matrix_with_spectrum([3.0, 0.3], 4, 3, batch=(2,), device=device)
    u = _randn(2, 3, device=device)
    return (lambda W: lipkernels.power_iteration(W, u, iters)[0]), (W,)


def _conv_power_iteration(device, iters):
    """A 2 x 2 filter at stride 2 on a 4 x 4 image: the windows do not overlap, so the conv map
    is the filter's 2 x 8 matrix on each, whose singular values 2 and 0.2 it repeats."""
    W = matrix_with_spectrum([2.0, 0.2], 2, 8, device=device).reshape(2, 2, 2, 2)
    u = _randn(1, 2, 4, 4, device=device)
    return (lambda W: lipkernels.conv_power_iteration(W, u, iters, 2, 0)[0]), (W,)


def _bounds(device, iters, reduce=False):
    W = filter_with_spectral_gap((3, 2, 3, 3), device=device)
    vectors = initial_vectors(W)
    fn = lipkernels.fantastic_four if reduce else lipkernels.conv_spectral_bounds
    return (lambda W: fn(W, iters, vectors)[0]), (W,)


def _series(grad_mode):
    return lambda x, S: lipkernels.soc_exp(x, S, 4, grad_mode)


def _soc_exp(grad_mode):
    def build(device, iters):
        x, S = _randn(1, 2, 4, 4, device=device), 0.3 * _randn(2, 2, 3, 3, device=device)
        return _series(grad_mode), (x, S)
    return build


def _max_min(pairing):
    def build(device, iters):
        return (lambda x: lipkernels.max_min(x, pairing)), (_randn(2, 4, 3, device=device),)
    return build


def _cayley(shape, complex_):
    """Complex matrices pass as real (..., 2) tensors (view_as_complex), so that every transform
    and oracle sees a real function."""
    def build(device, iters):
        if not complex_:
            return lipkernels.cayley, (_randn(*shape, device=device),)

        def fn(W):
            return torch.view_as_real(lipkernels.cayley(torch.view_as_complex(W)))
        return fn, (_randn(*shape, 2, device=device),)
    return build


def _cayley_conv2d(c_out, c_in):
    def build(device, iters):
        x, weight = _randn(1, c_in, 3, 3, device=device), _randn(c_out, c_in, 3, 3, device=device)
        return lipkernels.cayley_conv2d, (x, weight)
    return build


def _bjorck(shape, with_scale, order=1):
    """5 iterations (not converged), from the Frobenius scaling or a positive tensor scale."""
    def build(device, iters):
        W = _randn(*shape, device=device)
        if not with_scale:
            return (lambda W: lipkernels.bjorck(W, 5, 0.5, order)), (W,)
        scale = 2 + torch.linalg.matrix_norm(W, ord=2)
        return (lambda W, scale: lipkernels.bjorck(W, 5, 0.5, order, scale)), (W, scale)
    return build


def _convex_potential(x_shape, weight_shape, per_channel):
    """Random inputs: no pre-activation is within the differences' step of relu's kink."""
    def build(device, iters):
        inner = weight_shape[0]
        scale = (torch.rand(inner, dtype=DTYPE, device=device) + 0.5 if per_channel
                 else torch.tensor(0.7, dtype=DTYPE, device=device))
        return lipkernels.convex_potential, (_randn(*x_shape, device=device),
                                             _randn(*weight_shape, device=device) / 2,
                                             _randn(inner, device=device), scale)
    return build


def _aol_rescaling(shape, weighted):
    """Random weights: every G entry far from 0, where |G| has its kink."""
    def build(device, iters):
        weight = _randn(*shape, device=device)
        if not weighted:
            return lipkernels.aol_rescaling, (weight,)
        return lipkernels.aol_rescaling, (weight, _randn(shape[1], device=device))
    return build


def _bcop_filter(size, in_channels, out_channels):
    """Random (not orthogonal) matrices: the construction is a polynomial in any matrices."""
    def build(device, iters):
        channels = max(in_channels, out_channels)
        M = _randn(2 * size - 1, channels, channels, device=device)
        return (lambda M: lipkernels.bcop_filter(M, in_channels, out_channels)), (M,)
    return build


CASES = {
    "power_iteration": Case("power_iteration", _power_iteration, POWER_ITERATION_KERNELS,
                            constant_vectors=True),
    "conv_spectral_bounds": Case("conv_spectral_bounds", _bounds, BOUNDS_KERNELS,
                                 constant_vectors=True),
    "conv_power_iteration": Case("conv_power_iteration", _conv_power_iteration,
                                 CONV_POWER_ITERATION_KERNELS, constant_vectors=True),
    "fantastic_four": Case("conv_spectral_bounds",
                           lambda device, iters: _bounds(device, iters, reduce=True),
                           BOUNDS_KERNELS, constant_vectors=True),
    "conv_singular_values": Case("conv_singular_values", lambda device, iters: (
        lambda W: lipkernels.conv_singular_values(W, 4), (_randn(2, 2, 3, 3, device=device),))),
    "conv_spectral_norm": Case("conv_spectral_norm", lambda device, iters: (
        lambda W: lipkernels.conv_spectral_norm(W, 4), (_randn(2, 2, 3, 3, device=device),))),
    # 1 x 1 filters: one frequency response per pixel, each with a well separated top singular
    # value, so the iteration converges like power_iteration's.
    "conv_spectral_norm_iters": Case("conv_spectral_norm", lambda device, iters: (
        lambda W: lipkernels.conv_spectral_norm(W, 2, iters=iters),
        (matrix_with_spectrum([2.0, 0.2], 2, 2, device=device)[:, :, None, None],)),
        FREQUENCY_KERNELS, constant_vectors=True),
    "skew": Case("skew", lambda device, iters: (lipkernels.skew, (_randn(2, 2, 3, 3, device=device),))),
    "soc_exp_exact": Case("soc_exp", _soc_exp("exact"), SOC_EXP_KERNELS),
    "soc_exp_fast": Case("soc_exp", _soc_exp("fast"), SOC_EXP_KERNELS, fast=True),
    "max_min_halves": Case("max_min", _max_min("halves"), MAX_MIN_KERNELS),
    "max_min_pairs": Case("max_min", _max_min("pairs"), MAX_MIN_KERNELS),
    "householder": Case("householder", lambda device, iters: (
        lipkernels.householder, (_randn(2, 4, 3, device=device), _randn(2, device=device))),
        HOUSEHOLDER_KERNELS),
    "cayley_real_tall": Case("cayley", _cayley((2, 4, 3), False), CAYLEY_KERNELS),
    "cayley_real_wide": Case("cayley", _cayley((2, 3, 4), False), CAYLEY_KERNELS),
    "cayley_complex_tall": Case("cayley", _cayley((3, 2), True), CAYLEY_KERNELS),
    "cayley_complex_wide": Case("cayley", _cayley((2, 3), True), CAYLEY_KERNELS),
    "cayley_conv2d_square": Case("cayley_conv2d", _cayley_conv2d(2, 2), CAYLEY_CONV2D_KERNELS),
    "cayley_conv2d_wide": Case("cayley_conv2d", _cayley_conv2d(2, 3), CAYLEY_CONV2D_KERNELS),
    "bjorck_tall": Case("bjorck", _bjorck((4, 3), False), BJORCK_KERNELS),
    "bjorck_wide_scaled": Case("bjorck", _bjorck((2, 2, 3), True), BJORCK_KERNELS),
    # Order 2 on the kernels that run it (the Triton kernels run order 1).
    "bjorck_order_2": Case("bjorck", _bjorck((4, 3), False, order=2),
                           {name: entry for name, entry in BJORCK_KERNELS.items()
                            if name != "triton"}),
    "bcop_filter_4_to_2_k2": Case("bcop_filter", _bcop_filter(2, 4, 2), BCOP_FILTER_KERNELS),
    "bcop_filter_2_to_4_k3": Case("bcop_filter", _bcop_filter(3, 2, 4), BCOP_FILTER_KERNELS),
    "aol_rescaling_matrix": Case("aol_rescaling", _aol_rescaling((4, 3), False),
                                 AOL_RESCALING_KERNELS),
    "aol_rescaling_filter_log_q": Case("aol_rescaling", _aol_rescaling((2, 3, 2, 3), True),
                                       AOL_RESCALING_KERNELS),
    "convex_potential_conv": Case("convex_potential",
                                  _convex_potential((2, 3, 4, 4), (2, 3, 3, 3), False),
                                  CONVEX_POTENTIAL_KERNELS),
    "convex_potential_linear": Case("convex_potential", _convex_potential((3, 4), (5, 4), True),
                                    CONVEX_POTENTIAL_KERNELS),
}

cases = pytest.mark.parametrize("name", list(CASES))
targets = pytest.mark.parametrize("device,backend", TARGETS)


def _setup(name, device, backend, iters=CONVERGED):
    """(case, fn, primals, whether `backend` must refuse transforms) after skipping a target
    that cannot run here."""
    case = CASES[name]
    if backend != "auto":
        require_backend(device, backend)
        if case.kernels is not None and backend != "reference" and backend not in case.kernels:
            pytest.skip(f"no {backend} kernel of {case.op} in this build")
    refuses = case.kernels is not None and backend not in ("reference", "auto")
    fn, primals = case.build(device, iters)
    return case, fn, primals, refuses


def _refusal(case, backend, transform: str):
    return pytest.raises(RuntimeError, match=(f"lipkernels.{case.op}: the {backend} backend does "
                                              f"not support {transform}"))


def _central_difference(fn, primals, tangents):
    plus = fn(*(p + EPS * t for p, t in zip(primals, tangents)))
    minus = fn(*(p - EPS * t for p, t in zip(primals, tangents)))
    return (plus - minus) / (2 * EPS)


def _assert_close_to_difference(actual, expected):
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7 * scale)


def _directions(primals):
    return tuple(torch.randn_like(p) for p in primals)


@cases
@targets
def test_jvp_matches_finite_differences(name, device, backend):
    case, fn, primals, refuses = _setup(name, device, backend)
    tangents = _directions(primals)
    with lipkernels.use_backend(backend):
        if refuses:
            with _refusal(case, backend, "torch.func.jvp/jacfwd"):
                jvp(fn, primals, tangents)
            return
        _, tangent = jvp(fn, primals, tangents)
        expected = _central_difference(fn, primals, tangents)
    _assert_close_to_difference(tangent, expected)


@cases
@targets
def test_forward_mode_ad_matches_finite_differences(name, device, backend):
    """Dual tensors of torch.autograd.forward_ad (no torch.func): the kernels used to return a
    zero tangent here."""
    case, fn, primals, refuses = _setup(name, device, backend)
    tangents = _directions(primals)
    with lipkernels.use_backend(backend):
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)]
            if refuses:
                with _refusal(case, backend, "forward-mode AD"):
                    fn(*duals)
                return
            tangent = forward_ad.unpack_dual(fn(*duals)).tangent
        expected = _central_difference(fn, primals, tangents)
    _assert_close_to_difference(tangent, expected)


@cases
@targets
def test_vmap_matches_a_loop(name, device, backend):
    case, fn, primals, refuses = _setup(name, device, backend)
    batched = [torch.stack((p, p + 0.01 * torch.randn_like(p))) for p in primals]
    with lipkernels.use_backend(backend):
        if refuses:
            with _refusal(case, backend, "torch.func.vmap"):
                vmap(fn)(*batched)
            return
        actual = vmap(fn)(*batched)
        expected = torch.stack([fn(*(b[i] for b in batched)) for i in range(2)])
    torch.testing.assert_close(actual, expected)


@cases
@targets
def test_jacrev_and_grad_match_autograd(name, device, backend):
    case, fn, primals, refuses = _setup(name, device, backend)
    argnums = tuple(range(len(primals)))
    probe = torch.randn_like(fn(*primals))

    def loss(*args):
        return (fn(*args) * probe).sum()

    with lipkernels.use_backend(backend):
        if refuses:
            with _refusal(case, backend, "torch.func.grad/vjp/jacrev"):
                jacrev(fn, argnums)(*primals)
            with _refusal(case, backend, "torch.func.grad/vjp/jacrev"):
                grad(loss, argnums)(*primals)
            return
        jacobians = jacrev(fn, argnums)(*primals)
        gradients = grad(loss, argnums)(*primals)
        expected_jacobians = torch.autograd.functional.jacobian(fn, primals)
        leaves = [p.detach().requires_grad_() for p in primals]
        expected_gradients = torch.autograd.grad(loss(*leaves), leaves)
    torch.testing.assert_close(jacobians, expected_jacobians)
    torch.testing.assert_close(gradients, expected_gradients)


def _vjp_dot(fn, primals, cotangent, probes, create_graph):
    """H = <vjp of fn at primals with cotangent, probes>, and the leaves it was computed from."""
    leaves = [p.detach().requires_grad_() for p in primals]
    cotangent = cotangent.detach().requires_grad_(create_graph)
    grads = torch.autograd.grad(fn(*leaves), leaves, cotangent, create_graph=create_graph)
    return sum((g * r).sum() for g, r in zip(grads, probes)), leaves, cotangent


def _second_order_directions(case, primals, cotangent):
    """Directions of the finite difference in (primals, cotangent): the cotangent only where the
    gradient is constant in the primals (the power-iteration convention)."""
    if case.constant_vectors:
        return tuple(torch.zeros_like(p) for p in primals), torch.randn_like(cotangent)
    return _directions(primals), torch.randn_like(cotangent)


@cases
@targets
def test_double_backward_matches_finite_differences_of_the_gradient(name, device, backend):
    """create_graph=True (gradient penalties): the derivative of H(primals, g) = <vjp(g), r>
    along a random direction against central differences of H."""
    case, fn, primals, _ = _setup(name, device, backend, iters=2)
    cotangent = torch.randn_like(fn(*primals))
    probes = _directions(primals)
    tangents, cotangent_tangent = _second_order_directions(case, primals, cotangent)
    with lipkernels.use_backend(backend):
        H, leaves, g = _vjp_dot(fn, primals, cotangent, probes, create_graph=True)
        if case.fast:
            with pytest.raises(RuntimeError, match=re.escape(FAST_DOUBLE_BACKWARD)):
                torch.autograd.grad(H, (*leaves, g))
            return
        *d_primals, d_cotangent = torch.autograd.grad(H, (*leaves, g), materialize_grads=True)

        def h(*args):
            return _vjp_dot(fn, args[:-1], args[-1], probes, create_graph=False)[0]

        expected = _central_difference(h, (*primals, cotangent), (*tangents, cotangent_tangent))
    actual = sum((d * t).sum() for d, t in zip((*d_primals, d_cotangent),
                                                (*tangents, cotangent_tangent)))
    _assert_close_to_difference(actual, expected)
    if case.constant_vectors:
        assert all(d.abs().max() == 0 for d in d_primals), "the gradient must be constant in W"


@cases
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_second_order_torch_func_matches_finite_differences(name, backend):
    """Hessian-vector products through torch.func with the reference: jvp of vjp
    (forward-over-reverse) against central differences of the gradient, and torch.func.grad of
    H = <vjp, r> (reverse-over-reverse) against it, <grad H, t> = <hvp, r>. The fast soc_exp
    runs its exact series under forward mode, so its forward-over-reverse Hessian is the exact
    one, and refuses reverse-over-reverse."""
    case, fn, primals, _ = _setup(name, "cpu", backend)
    cotangent = torch.randn_like(fn(*primals))
    tangents, _ = _second_order_directions(case, primals, cotangent)
    probes = _directions(primals)
    argnums = tuple(range(len(primals)))

    def gradient(fn):
        return lambda *args: vjp(fn, *args)[1](cotangent)

    def flat_gradient(*args):
        exact = _series("exact") if case.fast else fn
        return torch.cat([g.flatten() for g in gradient(exact)(*args)])

    def H(*args):
        return sum((g * r).sum() for g, r in zip(gradient(fn)(*args), probes))

    with lipkernels.use_backend(backend):
        _, hvp = jvp(gradient(fn), primals, tangents)
        hvp = torch.cat([h.flatten() for h in hvp])
        if case.fast:
            with pytest.raises(RuntimeError, match=re.escape(FAST_DOUBLE_BACKWARD)):
                grad(H, argnums)(*primals)
            reverse = None
        else:
            reverse = sum((d * t).sum() for d, t in zip(grad(H, argnums)(*primals), tangents))
        expected = (torch.zeros_like(hvp) if case.constant_vectors
                    else _central_difference(flat_gradient, primals, tangents))
    probe = torch.cat([r.flatten() for r in probes])
    if case.constant_vectors:
        torch.testing.assert_close(hvp, expected, rtol=0, atol=0)
        assert reverse == 0
        return
    _assert_close_to_difference(hvp, expected)
    if reverse is not None:
        torch.testing.assert_close(reverse, (hvp * probe).sum())


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_power_iteration_derivative_holds_u_and_v_constant_under_every_transform(backend):
    """Before convergence (1 iteration) the derivative is still d sigma = v^T dW u, with the
    returned u and v: for jvp, forward AD, jacrev and vmap of jacrev alike."""
    W, dW = _randn(2, 4, 3, device="cpu"), _randn(2, 4, 3, device="cpu")
    u0 = _randn(2, 3, device="cpu")
    with lipkernels.use_backend(backend):
        _, u, v = lipkernels.power_iteration(W, u0, 1)

        def sigma(W, u0):
            return lipkernels.power_iteration(W, u0, 1)[0]

        expected = (v * (dW @ u[..., None]).squeeze(-1)).sum(-1)
        _, tangent = jvp(lambda W: sigma(W, u0), (W,), (dW,))
        with forward_ad.dual_level():
            dual = forward_ad.unpack_dual(sigma(forward_ad.make_dual(W, dW), u0)).tangent
        jacobian = jacrev(sigma)(W, u0)  # (2, 2, 4, 3): d sigma_b / d W_c
        per_matrix = vmap(jacrev(sigma))(W, u0)
    torch.testing.assert_close(tangent, expected)
    torch.testing.assert_close(dual, expected)
    outer = v[:, :, None] * u[:, None, :]
    torch.testing.assert_close(jacobian[0, 0], outer[0])
    torch.testing.assert_close(jacobian[1, 1], outer[1])
    assert jacobian[0, 1].abs().max() == 0 and jacobian[1, 0].abs().max() == 0
    torch.testing.assert_close(per_matrix, outer)


def test_auto_gives_the_reference_result_under_transforms():
    """`auto` picks the cpp kernel for plain calls but the reference under a transform: equal,
    to the last bit, to an explicit reference run."""
    require_backend("cpu", "cpp")
    fn, (x, S) = _soc_exp("exact")("cpu", None)
    results = {}
    for backend in ("auto", "reference"):
        with lipkernels.use_backend(backend):
            results[backend] = (jvp(fn, (x, S), (x, S))[1], vmap(fn)(x[None], S[None]),
                                jacrev(fn)(x, S))
    for actual, expected in zip(results["auto"], results["reference"]):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_captured_plain_tensors_keep_the_kernel():
    """A transform over other tensors does not refuse the kernel on captured plain inputs."""
    require_backend("cpu", "cpp")
    fn, (x, S) = _soc_exp("exact")("cpu", None)
    scale = _randn(3, device="cpu")
    with lipkernels.use_backend("cpp"):
        actual = vmap(lambda s: s * fn(x, S))(scale)
    torch.testing.assert_close(actual, scale[:, None, None, None, None] * fn(x, S))


@pytest.mark.parametrize("transform", ["grad", "jvp"])
def test_torch_compile_of_a_transform_runs_the_reference_or_raises(transform):
    """Under torch.compile only whether a transform is active can be traced: `auto` still runs
    the reference (jvp used to be silently wrong there) and an explicit kernel still refuses."""
    require_backend("cpu", "cpp")
    fn, (x, S) = _soc_exp("exact")("cpu", None)

    def transformed(x):
        if transform == "grad":
            return grad(lambda x: fn(x, S).square().sum())(x)
        return jvp(lambda x: fn(x, S), (x,), (x,))[1]

    with lipkernels.use_backend("reference"):
        expected = transformed(x)
    with lipkernels.use_backend("auto"):
        torch._dynamo.reset()
        actual = torch.compile(transformed, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(actual, expected)
    with lipkernels.use_backend("cpp"):
        torch._dynamo.reset()
        # Dynamo wraps the error; its message keeps ours.
        with pytest.raises(Exception, match="the cpp backend does not support a torch.func "
                                            "transform under torch.compile"):
            torch.compile(transformed, backend="aot_eager", fullgraph=True)(x)


# ------------------------------------------------------------------------------------------
# Layers: jacrev / vmap / grad (what Lipschitz-constant estimators call) against plain autograd.

def _layers():
    nn = lipkernels.nn
    factory = {"dtype": DTYPE}
    return {
        "SOCConv2d": (lambda: nn.SOCConv2d(2, 4, 3, stride=2, **factory), (2, 2, 4, 4)),
        "SOCLinear": (lambda: nn.SOCLinear(3, 5, **factory), (2, 3)),
        "CayleyConv2d": (lambda: nn.CayleyConv2d(2, 3, 3, **factory), (2, 2, 4, 4)),
        "CayleyLinear": (lambda: nn.CayleyLinear(4, 3, **factory), (2, 4)),
        "BjorckLinear": (lambda: nn.BjorckLinear(4, 3, **factory), (2, 4)),
        "BCOPConv2d": (lambda: nn.BCOPConv2d(2, 8, 4, stride=2, bjorck_iters=5, **factory),
                       (2, 2, 4, 4)),
        "MaxMin": (lambda: nn.MaxMin(), (2, 4, 3)),
        "GroupSort": (lambda: nn.GroupSort(3), (2, 6, 3)),
        "HouseHolder": (lambda: nn.HouseHolder(4, **factory), (2, 4, 3)),
        "LipConvNet": (lambda: nn.LipConvNet(depth=5, init_channels=1, num_classes=3,
                                             in_channels=1).to(DTYPE), (2, 1, 32, 32)),
        "CPLConv2d": (lambda: nn.CPLConv2d(2, 3, input_size=4, **factory), (2, 2, 4, 4)),
        "CPLLinear": (lambda: nn.CPLLinear(4, 3, **factory), (2, 4)),
        "SLLConv2d": (lambda: nn.SLLConv2d(2, 3, **factory), (2, 2, 4, 4)),
        "SLLLinear": (lambda: nn.SLLLinear(4, 3, **factory), (2, 4)),
        "AOLConv2d": (lambda: nn.AOLConv2d(2, 3, **factory), (2, 2, 4, 4)),
        "AOLLinear": (lambda: nn.AOLLinear(4, 3, **factory), (2, 4)),
    }


layers = pytest.mark.parametrize("layer_name", list(_layers()))
layer_backends = pytest.mark.parametrize("backend", ["reference", "auto"])


def _layer(layer_name):
    make, shape = _layers()[layer_name]
    return make().eval(), torch.randn(shape, dtype=DTYPE)


@layers
@layer_backends
def test_layer_jacrev_matches_autograd_jacobian(layer_name, backend):
    layer, x = _layer(layer_name)
    with lipkernels.use_backend(backend):
        actual = jacrev(layer)(x[:1])
        expected = torch.autograd.functional.jacobian(layer, x[:1])
    torch.testing.assert_close(actual, expected)
    assert actual.abs().max() > 0


@layers
@layer_backends
def test_layer_vmap_over_samples_matches_the_batch(layer_name, backend):
    layer, x = _layer(layer_name)
    with lipkernels.use_backend(backend):
        actual = vmap(lambda sample: layer(sample[None])[0])(x)
        expected = layer(x)
    torch.testing.assert_close(actual, expected)


@layers
@layer_backends
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_grad_of_parameters_matches_autograd(layer_name, backend, mode):
    layer, x = _layer(layer_name)
    layer.train(mode == "train")
    params = {name: p.detach() for name, p in layer.named_parameters()}
    if not params:
        pytest.skip(f"{layer_name} has no parameters")
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    probe = torch.randn_like(layer(x))

    def loss(params):
        # Fresh copies of the buffers: a training forward updates its power-iteration vectors.
        state = {**params, **{name: b.clone() for name, b in buffers.items()}}
        return (functional_call(layer, state, (x,)) * probe).sum()

    with lipkernels.use_backend(backend):
        actual = grad(loss)(params)
        leaves = {name: p.clone().requires_grad_() for name, p in params.items()}
        expected = dict(zip(leaves, torch.autograd.grad(loss(leaves), list(leaves.values()))))
    torch.testing.assert_close(actual, expected)
    assert any(g.abs().max() > 0 for g in actual.values())


class _FirstKernelCall(TorchDispatchMode):
    """Records the first lipkernels op a call dispatches: (op, args, kwargs)."""

    def __init__(self):
        super().__init__()
        self.call = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.call is None and func.namespace == "lipkernels":
            self.call = (func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


RAW_TRANSFORMS = {
    "jvp": ("torch.func.jvp/jacfwd",
            lambda fn, primals: jvp(fn, primals, tuple(map(torch.ones_like, primals)))),
    "grad": ("torch.func.grad/vjp/jacrev",
             lambda fn, primals: grad(lambda *p: fn(*p).sum())(*primals)),
    "forward_ad": ("forward-mode AD", lambda fn, primals: _dual_call(fn, primals)),
}


def _dual_call(fn, primals):
    with forward_ad.dual_level():
        return fn(*(forward_ad.make_dual(p, torch.ones_like(p)) for p in primals))


@cases
@targets
@pytest.mark.parametrize("transform", list(RAW_TRANSFORMS))
def test_raw_kernel_ops_refuse_transforms(name, device, backend, transform):
    """torch.ops.lipkernels.* called directly (as a peer library might) under a transform: an
    error naming the op and the transform, not the zero tangent torch.library would give."""
    case, fn, primals, refuses = _setup(name, device, backend)
    if not refuses:
        pytest.skip("not a kernel backend of this op")
    with lipkernels.use_backend(backend), _FirstKernelCall() as recorder:
        fn(*primals)
    op, args, kwargs = recorder.call
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)
                 and (a.is_floating_point() or a.is_complex())]

    def raw(*tensors):
        full = list(args)
        for position, tensor in zip(positions, tensors):
            full[position] = tensor
        return op(*full, **kwargs)[0]

    message, run = RAW_TRANSFORMS[transform]
    with pytest.raises(RuntimeError, match=re.escape(f"torch.ops.lipkernels.{op._opname} does "
                                                     f"not support {message}")):
        run(raw, tuple(args[i] for i in positions))
