"""convex_potential: the reference against the CPL and SLL code and against the math (a gradient
step on a convex potential, 1-Lipschitz at scale 2 / ||W||^2 and not above it), every kernel
backend against the reference (forward, backward, gradcheck, opcheck, torch.compile), what the
kernels keep, NaN, half precision and bad input."""

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels.ops.convex_potential import KERNELS
from lipkernels.reference.convex_potential import same_padding
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     compare_with_reference, custom_ops, gradcheck, require_kernel, run)

# (x shape, weight shape): filters 1x1 to 5x5, non-square kernels and images, C_inner below,
# equal to and above C; matrices.
PROBLEMS = [((2, 4, 5, 6), (3, 4, 3, 3)), ((3, 2, 4, 4), (5, 2, 1, 1)),
            ((1, 3, 7, 5), (3, 3, 3, 5)), ((2, 6, 6, 6), (2, 6, 5, 5)),
            ((5, 7), (4, 7)), ((4, 3), (6, 3))]


def problem(x_shape, weight_shape, per_channel=False, bias=True, device="cpu"):
    """float64 (x, weight, bias, scale, grad_z), pre-activations well away from relu's kink."""
    x = torch.randn(x_shape, dtype=torch.float64, device=device)
    weight = torch.randn(weight_shape, dtype=torch.float64, device=device) / 2
    inner = weight_shape[0]
    b = torch.randn(inner, dtype=torch.float64, device=device) if bias else None
    scale = (torch.rand(inner, dtype=torch.float64, device=device) + 0.5 if per_channel
             else torch.tensor(0.7, dtype=torch.float64, device=device))
    return x, weight, b, scale, torch.randn(x_shape, dtype=torch.float64, device=device)


def operator(weight, image):
    """The explicit matrix (C_inner * n, C * n) of W: the same padded convolution on `image`
    (C, H, W), or the matrix itself."""
    if weight.dim() == 2:
        return weight
    basis = torch.eye(image.numel(), dtype=weight.dtype).view(-1, *image)
    columns = F.conv2d(basis, weight, padding=same_padding(weight))
    return columns.flatten(1).t()


def gradients(fn, with_bias=True):
    """(x, weight, bias, scale, g) -> the gradients of <fn(x, weight, bias, scale), g>."""
    def grad(x, weight, bias, scale, g):
        inputs = [t.detach().requires_grad_() for t in (x, weight, scale)]
        b = bias.detach().requires_grad_() if bias is not None else None
        z = fn(inputs[0], inputs[1], b, inputs[2])
        return torch.autograd.grad((z * g).sum(), inputs + ([b] if b is not None else []))
    return grad


def seed_cpl(x, kernel, bias, h):
    """`ConvexPotentialLayerConv.forward` of the CPL code with its h, padding 1 (k = 3)."""
    res = F.conv2d(x, kernel, bias=bias, padding=1)
    res = F.relu(res)
    res = F.conv_transpose2d(res, kernel, padding=1)
    return x - h * res


def seed_sll(x, kernel, bias, t):
    """The SLL code's convolution step with its rescaling t (C_inner,): 2 * conv_transpose2d of
    the rescaled activation."""
    res = F.relu(F.conv2d(x, kernel, bias=bias, padding=1))
    res = t[None, :, None, None] * res
    return x - 2 * F.conv_transpose2d(res, kernel, padding=1)


def test_reference_matches_the_cpl_and_sll_code():
    x, weight, bias, h, _ = problem((2, 4, 6, 5), (3, 4, 3, 3))
    assert torch.equal(reference.convex_potential(x, weight, bias, h), seed_cpl(x, weight, bias, h))
    t = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(reference.convex_potential(x, weight, bias, 2 * t),
                               seed_sll(x, weight, bias, t), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("x_shape,weight_shape", PROBLEMS)
def test_step_is_a_gradient_step_on_a_convex_potential(x_shape, weight_shape):
    """z = x - grad f(x), f(x) = sum_c scale_c sum relu(w_c x + b_c)^2 / 2."""
    x, weight, bias, scale, _ = problem(x_shape, weight_shape, per_channel=True)
    x = x.requires_grad_()
    if weight.dim() == 4:
        pre = F.conv2d(x, weight, bias, padding=(weight.shape[2] // 2, weight.shape[3] // 2))
        factors = scale.view(1, -1, 1, 1)
    else:
        pre, factors = F.linear(x, weight, bias), scale
    potential = (factors * F.relu(pre) ** 2 / 2).sum()
    (grad,) = torch.autograd.grad(potential, x)
    torch.testing.assert_close(reference.convex_potential(x, weight, bias, scale), x - grad,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("x_shape,weight_shape", [PROBLEMS[0], PROBLEMS[2], PROBLEMS[4]])
def test_lipschitz_at_two_over_the_squared_norm_and_not_above(device, backend, x_shape,
                                                              weight_shape):
    """scale = 2 / ||W||^2 (the exact norm, from the explicit operator): every Jacobian has norm
    <= 1. Twice that scale: the Jacobian where every unit is active, I - 4 W^T W / ||W||^2, has
    norm 3, so the bound is not vacuous."""
    require_kernel(device, backend, {"reference": None, **KERNELS})
    x, weight, _, _, _ = problem(x_shape, weight_shape)
    norm = torch.linalg.matrix_norm(operator(weight, x.shape[1:]), ord=2)
    step = lambda scale, bias: (lambda v: run(backend, lipkernels.convex_potential,  # noqa: E731
                                              v[None], weight, bias, scale)[0])
    for bias in (torch.randn(weight.shape[0], dtype=torch.float64), None):
        jacobian = torch.autograd.functional.jacobian(step(2 / norm**2, bias), x[0])
        assert torch.linalg.matrix_norm(jacobian.flatten(0, x.dim() - 2).flatten(1), ord=2) <= (
            1 + 1e-12)
    active = torch.full((weight.shape[0],), 1e3, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(step(4 / norm**2, active), x[0])
    expansion = torch.linalg.matrix_norm(jacobian.flatten(0, x.dim() - 2).flatten(1), ord=2)
    torch.testing.assert_close(expansion, torch.tensor(3.0, dtype=torch.float64))


def check_kernel(check, backend, inputs, dtype):
    """`check` (compare_with_reference) of the backend's z and gradients against the
    reference's."""
    kernel = lambda *a: run(backend, lipkernels.convex_potential, *a)  # noqa: E731
    check(kernel, reference.convex_potential, inputs[:4], dtype, ["z"])
    names = ["grad_x", "grad_weight", "grad_scale"] + (["grad_bias"] if inputs[2] is not None
                                                       else [])
    check(gradients(kernel), gradients(reference.convex_potential), inputs, dtype, names)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("x_shape,weight_shape", PROBLEMS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_kernel_forward_and_backward_match_reference(device, backend, x_shape, weight_shape,
                                                     per_channel, bias):
    require_kernel(device, backend, KERNELS)
    inputs = problem(x_shape, weight_shape, per_channel, bias, device)
    for dtype in (torch.float64, torch.float32):
        check_kernel(compare_with_reference, backend, inputs, dtype)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_work_split_over_planes(device, backend):
    """Shapes whose backward pass splits over several tasks, partial last chunks included; the
    channel sums (partials per plane) the same on a second run."""
    require_kernel(device, backend, KERNELS)
    for x_shape, weight_shape in [((9, 5, 70, 70), (3, 5, 3, 3)), ((40000, 6), (7, 6))]:
        inputs = problem(x_shape, weight_shape, per_channel=True, device=device)
        check_kernel(compare_with_reference, backend, inputs, torch.float32)
        grad = gradients(lambda *a: run(backend, lipkernels.convex_potential, *a))
        float_inputs = [t.float() for t in inputs]
        first, second = grad(*float_inputs), grad(*float_inputs)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, backend, dtype):
    """Half inputs: z and the gradients in that dtype, each of the kernel's steps rounded once,
    so within the reference's own error in that precision (twice it, or the dtype's relative
    tolerance)."""
    require_kernel(device, backend, KERNELS)
    for x_shape, weight_shape in (PROBLEMS[0], PROBLEMS[4]):
        check_kernel(compare_with_reference, backend,
                     problem(x_shape, weight_shape, per_channel=True, device=device), dtype)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("x_shape,weight_shape", [PROBLEMS[2], PROBLEMS[4]])
def test_gradcheck(device, backend, x_shape, weight_shape):
    require_kernel(device, backend, {"reference": None, **KERNELS})
    for per_channel in (False, True):
        x, weight, bias, scale, _ = problem(x_shape, weight_shape, per_channel, device=device)
        inputs = tuple(t.requires_grad_() for t in (x, weight, bias, scale))
        with lipkernels.use_backend(backend):
            assert gradcheck(lipkernels.convex_potential, inputs, device, backend)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_double_backward_matches_reference(device, backend):
    require_kernel(device, backend, KERNELS)
    x, weight, bias, scale, g = problem((2, 3, 4, 4), (2, 3, 3, 3), per_channel=True)

    def second_order(fn):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias, scale)]
        (grad_x,) = torch.autograd.grad((fn(*inputs) * g).sum(), inputs[0], create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), inputs)

    expected = second_order(reference.convex_potential)
    actual = second_order(lambda *a: run(backend, lipkernels.convex_potential, *a))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_keeps_the_activation(device, backend):
    """The forward op's second output is relu(W x + b), and only the activation-sized tensor is
    kept beyond the inputs: the reference's autograd also keeps W^T r, full width."""
    require_kernel(device, backend, KERNELS)
    forward, _ = custom_ops("convex_potential", backend)
    x, weight, bias, scale, _ = (t.float() for t in problem((2, 4, 5, 6), (3, 4, 3, 3)))
    z, activation = forward(x, weight, bias, scale)
    torch.testing.assert_close(activation, F.relu(F.conv2d(x, weight, bias, padding=1)))
    assert activation.shape == (2, 3, 5, 6)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_kernel(device, backend, KERNELS)
    forward, backward = custom_ops("convex_potential", backend)
    for x_shape, weight_shape in (PROBLEMS[0], PROBLEMS[4]):
        for per_channel in (False, True):
            x, weight, bias, scale, g = (t.float() for t in problem(x_shape, weight_shape,
                                                                    per_channel))
            inputs = tuple(t.requires_grad_() for t in (x, weight, bias, scale))
            torch.library.opcheck(forward, inputs)
            torch.library.opcheck(forward, (x.detach(), weight.detach(), None, scale.detach()))
            _, activation = forward(*(t.detach() for t in inputs))
            torch.library.opcheck(backward, (g, x.detach(), weight.detach(), scale.detach(),
                                             activation))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require_kernel("cpu", backend, {"reference": None, **KERNELS})
    x, weight, bias, scale = (t.float().requires_grad_() for t in problem(*PROBLEMS[0])[:4])

    def loss(x, weight, bias, scale):
        with lipkernels.use_backend(backend):
            return lipkernels.convex_potential(x, weight, bias, scale).square().sum()

    assert_compiled_matches_eager(loss, x, weight, bias, scale)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_nan_gives_nan(device, backend):
    require_kernel(device, backend, {"reference": None, **KERNELS})
    x, weight, bias, scale, _ = (t.float() for t in problem(*PROBLEMS[0], device=device))
    for index in range(4):
        inputs = [x.clone(), weight.clone(), bias.clone(), scale.clone()]
        inputs[index].view(-1)[0] = float("nan")
        z = run(backend, lipkernels.convex_potential, *inputs)
        assert z.isnan().any(), f"NaN in input {index} was lost"


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_zero_weight_and_empty_batch(device, backend):
    require_kernel(device, backend, {"reference": None, **KERNELS})
    x, weight, bias, scale, _ = problem(*PROBLEMS[0], device=device)
    z = run(backend, lipkernels.convex_potential, x, torch.zeros_like(weight), bias, scale)
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    empty = x[:0]
    assert run(backend, lipkernels.convex_potential, empty, weight, bias, scale).shape == (
        empty.shape)


def test_auto_runs_the_cpp_kernel():
    require_kernel("cpu", "cpp", KERNELS)
    x, weight, bias, scale, _ = problem(*PROBLEMS[0])
    assert lipkernels._backend.resolve("convex_potential", "cpu", KERNELS, x, weight) == "cpp"
    torch.testing.assert_close(lipkernels.convex_potential(x, weight, bias, scale),
                               reference.convex_potential(x, weight, bias, scale))


x4, w4 = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3)
BAD_INPUTS = [
    ((x4, torch.randn(3, 4, 3), None, torch.tensor(1.0)), ValueError,
     r"weight must be a matrix \(C_inner, C\) or a filter"),
    ((x4, torch.randn(3, 4, 2, 3), None, torch.tensor(1.0)), ValueError,
     "weight must have odd kernel sizes"),
    ((torch.randn(2, 4), w4, None, torch.tensor(1.0)), ValueError, "x must be 4-D"),
    ((torch.randn(2, 5, 5, 5), w4, None, torch.tensor(1.0)), ValueError,
     "x must have 4 channels"),
    ((x4, w4.double(), None, torch.tensor(1.0)), TypeError, "weight has dtype"),
    ((x4, w4, torch.randn(4), torch.tensor(1.0)), ValueError, r"bias must have shape \(3,\)"),
    ((x4, w4, None, torch.ones(4)), ValueError, r"scale must have shape \(\) or \(3,\)"),
    ((x4, w4, None, torch.ones(1, 3)), ValueError, r"scale must have shape \(\) or \(3,\)"),
    ((x4, w4, None, 1.0), TypeError, "scale must be a torch.Tensor"),
    ((x4, w4, None, torch.tensor(1, dtype=torch.int64)), TypeError, "scale has dtype"),
    ((x4.int(), w4, None, torch.tensor(1.0)), TypeError, "x must have dtype"),
    ((torch.randn(2, 4, 0, 5), w4, None, torch.tensor(1.0)), ValueError, "x must not be empty"),
]


@pytest.mark.parametrize("inputs,error,message", BAD_INPUTS)
def test_bad_input_is_rejected(inputs, error, message):
    with pytest.raises(error, match=message):
        lipkernels.convex_potential(*inputs)


@pytest.mark.parametrize("inputs,error,message",
                         [case for case in BAD_INPUTS if isinstance(case[0][3], torch.Tensor)])
def test_kernel_op_rejects_bad_input(inputs, error, message):
    """The C++ op checks its own arguments, in the same words."""
    require_kernel("cpu", "cpp", KERNELS)
    with pytest.raises(error, match=message):
        torch.ops.lipkernels.convex_potential(*inputs)
