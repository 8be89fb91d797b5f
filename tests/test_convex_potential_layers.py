"""CPLConv2d, CPLLinear, SLLConv2d, SLLLinear, AOLConv2d, AOLLinear: the layer maps' Lipschitz
constants (explicit Jacobians on small inputs, a power iteration on the Jacobian at realistic
sizes) never above `lipschitz_bound()`, which is 1 (SLL), below 1 (AOL) or within the power
iteration's error of 1 (CPL); CPL's schedule (one iteration per training call, EVAL_ITERS in eval,
reused inside cached(), never stale) and its eps guard under a zero weight, where the seed's
gradient is NaN; kernels against the reference; export and bad arguments."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels.nn import AOLConv2d, AOLLinear, CPLConv2d, CPLLinear, SLLConv2d, SLLLinear
from lipkernels.nn.convex_potential import EVAL_ITERS
from helpers import require_backend

# name: (factory, input shape (batch 1)): odd k 1 to 5, inner width below, equal to and above C.
LAYERS = {
    "CPLConv2d": (lambda: CPLConv2d(3, 2, input_size=5), (1, 3, 5, 5)),
    "CPLConv2d-k5": (lambda: CPLConv2d(2, 4, 5, input_size=(4, 6)), (1, 2, 4, 6)),
    "CPLLinear": (lambda: CPLLinear(6, 9), (1, 6)),
    "SLLConv2d": (lambda: SLLConv2d(3, 5), (1, 3, 5, 4)),
    "SLLConv2d-k1": (lambda: SLLConv2d(4, 2, 1), (1, 4, 3, 3)),
    "SLLLinear": (lambda: SLLLinear(5, 3), (1, 5)),
    "AOLConv2d": (lambda: AOLConv2d(3, 4), (1, 3, 5, 5)),
    "AOLConv2d-stride2": (lambda: AOLConv2d(4, 3, 3, stride=2, padding=0), (1, 4, 7, 6)),
    "AOLConv2d-circular": (lambda: AOLConv2d(3, 3, 3, padding_mode="circular"), (1, 3, 4, 5)),
    "AOLLinear": (lambda: AOLLinear(5, 7), (1, 5)),
}


def make(name, seed=0):
    """The layer in float64, moved off its initialisation by random parameters."""
    torch.manual_seed(seed)
    layer = LAYERS[name][0]().double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn_like(parameter) / math.sqrt(parameter[0].numel()))
    if isinstance(layer, (CPLConv2d, CPLLinear)):
        layer.train()
        for _ in range(EVAL_ITERS):  # a trained layer's vector: converged
            layer(torch.zeros(LAYERS[name][1], dtype=torch.float64))
    return layer.eval()


def jacobian_norm(layer, x):
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], x[0])
    return torch.linalg.matrix_norm(jacobian.reshape(-1, x[0].numel()), ord=2).item()


@pytest.mark.parametrize("name", list(LAYERS))
def test_jacobian_never_exceeds_the_bound(name):
    """At random points (float64), the explicit Jacobian's norm is at most lipschitz_bound(),
    which is 1 for SLL and CPLLinear and below 1 for AOL. A converged CPLConv2d is 1-Lipschitz at
    its vector's size (its sigma is that size's zero-padded norm), which these small inputs'
    certificate (the explicit operator's norm) shows."""
    layer = make(name)
    bound = layer.lipschitz_bound()
    norms = [jacobian_norm(layer, torch.randn(LAYERS[name][1], dtype=torch.float64))
             for _ in range(4)]
    assert max(norms) <= bound * (1 + 1e-12)
    if name.startswith("SLL") or name == "CPLLinear":
        assert bound == 1.0
    elif name.startswith("AOL"):
        assert bound < 1.0
    else:  # small inputs: the explicit operator's exact norm, which sigma converged to
        assert max(norms) <= 1 + 1e-9 and 1.0 <= bound <= 1 + 1e-9


def test_cpl_is_not_one_lipschitz_with_a_larger_scale():
    """The bound is not vacuous: doubling h makes the all-active Jacobian I - 2 h W^T W reach
    norm near 3, which the test above would catch."""
    layer = make("CPLLinear")
    with torch.no_grad():
        layer.bias.fill_(1e3)
    x = torch.randn(1, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.eps = layer.eps / 2
    assert jacobian_norm(layer, x) <= layer.lipschitz_bound() * (1 + 1e-12)
    h = float(layer.scale().detach())
    weight = layer.weight.detach()
    jacobian = torch.eye(6, dtype=torch.float64) - 2 * h * weight.T @ weight
    assert torch.linalg.matrix_norm(jacobian, ord=2) > 2.9


def power_iteration_on_jacobian(layer, x, iters=30):
    """||J(x)|| from below by a power iteration of vjp(jvp) at x."""
    v = torch.randn_like(x)
    v = v / v.norm()
    for _ in range(iters):
        _, jv = torch.func.jvp(layer, (x,), (v,))
        _, pullback = torch.func.vjp(layer, x)
        (jtjv,) = pullback(jv)
        v = jtjv / jtjv.norm()
    _, jv = torch.func.jvp(layer, (x,), (v,))
    return jv.norm().item()


@pytest.mark.parametrize("name", ["CPLConv2d", "SLLConv2d", "AOLConv2d"])
def test_realistic_size_jacobian_never_exceeds_the_bound(name):
    """32 x 32 images of 16 channels (float32): the layer map's local norm by a power iteration
    on its Jacobian, at random points, is at most the bound (the reference backend: the
    torch.func transforms run on it); CPL's certificate is within 2% of 1 at this size."""
    torch.manual_seed(1)
    layer = {"CPLConv2d": lambda: CPLConv2d(16, 16, input_size=32),
             "SLLConv2d": lambda: SLLConv2d(16, 16), "AOLConv2d": lambda: AOLConv2d(16, 16)}[name]()
    if isinstance(layer, CPLConv2d):
        for _ in range(EVAL_ITERS):
            layer(torch.zeros(1, 16, 32, 32))
    layer.eval()
    bound = layer.lipschitz_bound()
    # SLL: 1 up to the float32 rounding of t (a few ulps of T_c t_c); AOL below 1.
    assert bound <= (1.02 if isinstance(layer, CPLConv2d) else 1 + 1e-6)
    with lipkernels.use_backend("reference"):
        for _ in range(2):
            x = torch.randn(2, 16, 32, 32)
            assert power_iteration_on_jacobian(layer, x) <= bound * (1 + 1e-5)


def test_cpl_schedule_and_eval_cache():
    """Training: one iteration a call, the vector stored. Eval: EVAL_ITERS from the stored
    vector, which stays unchanged; inside cached() sigma is computed once and recomputed after a
    .data edit outside the block."""
    layer = CPLConv2d(3, 2, input_size=5).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    u0 = layer.u.clone()
    layer(x)
    expected = lipkernels.conv_power_iteration(layer.weight.detach(), u0, 1)[1]
    torch.testing.assert_close(layer.u, expected)
    layer.eval()
    u1 = layer.u.clone()
    sigma = lipkernels.conv_power_iteration(layer.weight.detach(), u1, EVAL_ITERS)[0]
    h = 2 / (sigma**2 + layer.eps)
    torch.testing.assert_close(layer(x), lipkernels.convex_potential(x, layer.weight, layer.bias,
                                                                     h))
    assert torch.equal(layer.u, u1)
    with lipkernels.nn.cached():
        first = layer(x)
        assert torch.equal(layer(x), first)
    with torch.no_grad():
        layer.weight.data.mul_(3)
    with lipkernels.nn.cached():
        assert not torch.allclose(layer(x), first)


def seed_power_sigma(kernel, u):
    """The CPL code's SpectralNormPowerMethod._compute_conv with one iteration (padding 1): the
    last v carries the gradient."""
    def normalize(arr):
        return arr / (torch.sqrt((arr ** 2).sum()) + 1e-12)
    v = normalize(F.conv2d(F.pad(u, (1, 1, 1, 1)), kernel))
    u = normalize(F.pad(F.conv_transpose2d(v, kernel), (-1, -1, -1, -1))).detach()
    return (F.conv2d(F.pad(u, (1, 1, 1, 1)), kernel) * v).sum()


def test_eps_guard_keeps_a_zero_weight_trainable():
    """A zero kernel (zero-initialised residual branches, or one decayed to zero): the seed's
    sigma has a NaN gradient (the backward of its normalisation divides by ||W u|| = 0), so a
    training run with it diverges at the first step; CPLConv2d's h is finite (2 / eps), its
    gradients finite, and training moves the weight off zero with a finite loss."""
    kernel = torch.zeros(2, 3, 3, 3, requires_grad=True)
    u = torch.randn(1, 3, 5, 5)
    h = 2 / (seed_power_sigma(kernel, u / u.norm()) ** 2 + 1e-4)
    x = torch.randn(4, 3, 5, 5)
    res = F.conv_transpose2d(F.relu(F.conv2d(x, kernel, torch.ones(2), padding=1)), kernel,
                             padding=1)
    (x - h * res).square().sum().backward()
    assert kernel.grad.isnan().any()

    layer = CPLConv2d(3, 2, input_size=5)
    with torch.no_grad():
        layer.weight.zero_()
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        loss = (layer(x) - x.flip(0)).square().mean()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        optimizer.step()
    assert layer.weight.abs().max() > 0
    assert math.isfinite(layer.lipschitz_bound())


@pytest.mark.parametrize("name", list(LAYERS))
def test_cpp_matches_the_reference_backend(name):
    require_backend("cpu", "cpp")
    layer = make(name).train()
    x = torch.randn(3, *LAYERS[name][1][1:], dtype=torch.float64)
    outputs = []
    for backend in ("reference", "cpp"):
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        with lipkernels.use_backend(backend):
            y = layer(x)
            grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
        outputs.append((y, grads))
        layer.load_state_dict(state)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["AOLConv2d", "AOLConv2d-stride2", "AOLLinear"])
def test_aol_vanilla_export_and_orthogonal_start(name):
    """The export is the same map; a fresh layer with at least as many outputs as inputs starts
    orthogonal (orthonormal columns at the centre tap make the rescaling the identity)."""
    layer = make(name)
    x = torch.randn(2, *LAYERS[name][1][1:], dtype=torch.float64)
    torch.testing.assert_close(layer.vanilla_export()(x), layer(x))
    fresh = LAYERS[name][0]().double()
    if fresh.weight.shape[0] < fresh.weight.shape[1]:
        return
    singular = torch.linalg.svdvals(fresh.rescaled_weight().flatten(1) if fresh.weight.dim() == 2
                                    else fresh.rescaled_weight()[:, :, 1, 1])
    torch.testing.assert_close(singular, torch.ones_like(singular), rtol=0, atol=1e-6)


def test_sll_scale_is_the_aol_bound_of_the_transposed_weight():
    """t = 1 / (T + eps) with T_c = sum_j |W W^T|_cj q_j / q_c, so T >= W W^T and
    ||diag(t)^(1/2) W|| <= 1."""
    layer = make("SLLLinear")
    with torch.no_grad():
        layer.log_q.copy_(torch.randn(3, dtype=torch.float64))
    weight, q = layer.weight.detach(), layer.log_q.detach().exp()
    gram = (weight @ weight.T).abs()
    T = (gram * q[None, :] / q[:, None]).sum(1)
    torch.testing.assert_close(layer.scale(), 2 / (T + 1e-6))
    assert torch.linalg.matrix_norm((layer.scale() / 2).sqrt()[:, None] * weight, ord=2) <= 1


@pytest.mark.parametrize("call,error,message", [
    (lambda: CPLConv2d(3, 2, 4), ValueError, "kernel_size must be odd"),
    (lambda: CPLConv2d(3, 2, eps=0.0), ValueError, "eps must be > 0"),
    (lambda: CPLConv2d(0, 2), ValueError, "channels must be >= 1"),
    (lambda: SLLConv2d(3, 2, 2), ValueError, "kernel_size must be odd"),
    (lambda: AOLConv2d(3, 2, padding=-1), ValueError, "padding must be an int >= 0"),
    (lambda: CPLConv2d(3, 2)(torch.randn(2, 4, 5, 5)), ValueError, "input has size 4 at dim 1"),
    (lambda: SLLLinear(3, 2)(torch.randn(2, 3, 1)), ValueError, "input must be 2-D"),
    (lambda: AOLLinear(3, 2)(torch.randn(2, 3).double()), TypeError, "input dtype"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()
