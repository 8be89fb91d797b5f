"""max_min: the reference against torch.maximum/minimum and GroupSort, every kernel backend against
the reference (forward, backward, tie routing, gradcheck, opcheck, torch.compile), the Jacobian is
a permutation, norm preservation, NaN, the MaxMin module, dispatch and bad input."""

import pytest
import torch

import lipkernels
from lipkernels import _backend, reference
from lipkernels.ops.max_min import KERNELS
from lipkernels.reference.max_min import merge_pairs, split_pairs
from lipkernels._conventions import pair_shape
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     compare_with_reference, custom_ops, gradcheck, require_backend, run)

PAIRINGS = ["halves", "pairs"]
# Ranks 2 to 5, odd and non-power-of-two channel and spatial sizes, 1x1 spatial.
SHAPES = [(3, 4), (2, 6, 5), (2, 4, 3, 5), (1, 2, 2, 3, 2), (3, 10, 1, 1)]


def with_ties(shape, pairing, device="cpu"):
    """float64 x (B, C, *spatial) in which every other pair along the channels is an exact tie."""
    a = torch.randn(pair_shape(shape), dtype=torch.float64)
    b = torch.randn(pair_shape(shape), dtype=torch.float64)
    b[:, ::2] = a[:, ::2]
    return merge_pairs(a, b, pairing).to(device)


def gradients(fn, pairing):
    """(x, g) -> grad_x of <fn(x, pairing), g>."""
    def grad(x, g):
        x = x.detach().requires_grad_()
        return torch.autograd.grad((fn(x, pairing) * g).sum(), x)[0]
    return grad


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_max_min_of_halves_and_sorted_adjacent_pairs(shape):
    x = torch.randn(shape, dtype=torch.float64)
    a, b = x.chunk(2, dim=1)
    assert torch.equal(reference.max_min(x, "halves"),
                       torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=1))
    # GroupSort(2) in its default layout sorts adjacent channel pairs, largest first.
    grouped = x.unflatten(1, (-1, 2)).sort(dim=2, descending=True).values.flatten(1, 2)
    assert torch.equal(reference.max_min(x, "pairs"), grouped)


def test_pairings_differ_by_a_channel_permutation():
    """cemanil/LNets #8: the halves and pairs forms agree once the channels are interleaved."""
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    interleave = torch.arange(6).reshape(2, 3).T.flatten()  # halves position -> pairs position
    assert torch.equal(reference.max_min(x[:, interleave], "pairs"),
                       reference.max_min(x, "halves")[:, interleave])


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_reference_ties_keep_the_order_unlike_torch_maximum(pairing):
    x, g = with_ties((2, 4, 3), pairing), torch.randn(2, 4, 3, dtype=torch.float64)
    grad = gradients(reference.max_min, pairing)(x, g)
    a, b = split_pairs(x, pairing)
    g_max, g_min = split_pairs(g, pairing)
    grad_a, grad_b = split_pairs(grad, pairing)
    ties = a == b
    assert ties.any() and (~ties).any()
    assert torch.equal(grad_a[ties], g_max[ties]) and torch.equal(grad_b[ties], g_min[ties])
    # torch.maximum / torch.minimum split a tie's gradient evenly: why the reference uses where.
    split = gradients(lambda x, p: merge_pairs(torch.maximum(*split_pairs(x, p)),
                                               torch.minimum(*split_pairs(x, p)), p), pairing)(x, g)
    assert not torch.equal(split, grad)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_kernel_forward_and_backward_match_reference(device, backend, shape, pairing):
    require_backend(device, backend)
    x, g = with_ties(shape, pairing, device), torch.randn(shape, dtype=torch.float64, device=device)
    for dtype in (torch.float64, torch.float32):
        compare_with_reference(lambda x: run(backend, lipkernels.max_min, x, pairing),
                               lambda x: reference.max_min(x, pairing), (x,), dtype, ["y"])
        compare_with_reference(gradients(lambda *a: run(backend, lipkernels.max_min, *a), pairing),
                               gradients(reference.max_min, pairing), (x, g), dtype, ["grad_x"])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_kernel_is_an_exact_permutation(device, backend, dtype, pairing):
    """No arithmetic: outputs, mask and gradients equal the reference to the bit in every dtype."""
    require_backend(device, backend)
    x = with_ties((3, 6, 2, 3), pairing, device).to(dtype)
    g = torch.randn(x.shape, device=device).to(dtype)
    forward, backward = custom_ops("max_min", backend)
    y, mask = forward(x, pairing)
    a, b = split_pairs(x, pairing)
    assert torch.equal(y, reference.max_min(x, pairing)) and torch.equal(mask, a >= b)
    assert torch.equal(backward(g, mask, pairing), gradients(reference.max_min, pairing)(x, g))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_gradient_goes_to_the_input_each_output_came_from(device, backend, pairing):
    """Ties route max's gradient to a and min's to b; a swapped pair routes them crosswise."""
    require_backend(device, backend)
    a = torch.tensor([[1.0, 2.0, -1.0]], device=device)
    b = torch.tensor([[1.0, 5.0, -3.0]], device=device)  # tie, swapped, kept
    x = merge_pairs(a, b, pairing).requires_grad_()
    g_max = torch.tensor([[10.0, 20.0, 30.0]], device=device)
    g_min = torch.tensor([[-10.0, -20.0, -30.0]], device=device)
    run(backend, lipkernels.max_min, x, pairing).backward(merge_pairs(g_max, g_min, pairing))
    grad_a, grad_b = split_pairs(x.grad, pairing)
    assert grad_a.tolist() == [[10.0, -20.0, 30.0]]
    assert grad_b.tolist() == [[-10.0, 20.0, -30.0]]


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_gradcheck(device, backend, pairing):
    require_backend(device, backend)
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    with lipkernels.use_backend(backend):
        assert gradcheck(lambda x: lipkernels.max_min(x, pairing), (x,), device, backend)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_jacobian_is_a_permutation_and_norms_are_kept(device, backend, pairing):
    require_backend(device, backend)
    x = torch.randn(3, 4, 2, dtype=torch.float64, device=device)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: run(backend, lipkernels.max_min, v.reshape(1, 4, 2), pairing).flatten(),
        x[0].flatten())
    assert set(jacobian.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(jacobian @ jacobian.T, torch.eye(8, dtype=torch.float64, device=device))
    y = run(backend, lipkernels.max_min, x, pairing)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-15,
                               atol=0)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_nan_stays_in_the_output(device, backend, pairing):
    require_backend(device, backend)
    a, b = torch.randn(2, 3, 4, device=device), torch.randn(2, 3, 4, device=device)
    a[0, 1, 2], b[1, 2, 3] = float("nan"), float("nan")
    y = run(backend, lipkernels.max_min, merge_pairs(a, b, pairing), pairing)
    first, second = split_pairs(y, pairing)
    pair_has_nan = torch.isnan(first) | torch.isnan(second)
    assert pair_has_nan[0, 1, 2] and pair_has_nan[1, 2, 3]
    assert torch.isnan(y).sum() == 2


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_non_contiguous_input(device, backend):
    require_backend(device, backend)
    x = torch.randn(2, 5, 3, 4, device=device).permute(0, 3, 2, 1)  # (2, 4, 3, 5), strided
    for pairing in PAIRINGS:
        assert torch.equal(run(backend, lipkernels.max_min, x, pairing),
                           reference.max_min(x, pairing))


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_backend(device, backend)
    forward, backward = custom_ops("max_min", backend)
    for pairing in PAIRINGS:
        x = with_ties((2, 4, 3), pairing, device).float()
        torch.library.opcheck(forward, (x.requires_grad_(), pairing))
        mask = forward(x.detach(), pairing)[1]
        torch.library.opcheck(backward, (torch.randn_like(x), mask, pairing))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_torch_compile_fullgraph(backend, pairing):
    require_backend("cpu", backend)
    x = torch.randn(2, 6, 3, requires_grad=True)
    module = lipkernels.nn.MaxMin(pairing)

    def loss(x):
        with lipkernels.use_backend(backend):
            return (lipkernels.max_min(x, pairing) * torch.arange(6.0)[:, None]).sum() + \
                module(x.flip(1)).square().sum()

    assert_compiled_matches_eager(loss, x)


def test_auto_and_explicit_cpp_run_the_kernel():
    require_backend("cpu", "cpp")
    x = torch.randn(2, 4, 3)
    for choice in ("cpp", "auto"):
        with lipkernels.use_backend(choice):
            assert _backend.resolve("max_min", "cpu", KERNELS) == "cpp"
            assert torch.equal(lipkernels.max_min(x), reference.max_min(x))


def test_module():
    module = lipkernels.nn.MaxMin()
    assert module.pairing == "halves" and repr(module) == "MaxMin(pairing='halves')"
    assert list(module.parameters()) == [] and list(module.state_dict()) == []
    x = torch.randn(2, 4, 3)
    assert torch.equal(module(x), lipkernels.max_min(x))
    assert torch.equal(lipkernels.nn.MaxMin("pairs")(x), lipkernels.max_min(x, "pairs"))
    with pytest.raises(ValueError, match="MaxMin: pairing must be one of halves, pairs; got 'odd'"):
        lipkernels.nn.MaxMin("odd")


@pytest.mark.parametrize(
    "x,pairing,error,message",
    [
        (torch.randn(4), "halves", ValueError, "max_min: x must have at least 2 dims"),
        (torch.randn(2, 3, 4), "halves", ValueError,
         r"max_min: x must have an even number of channels \(dim 1\).*got shape \(2, 3, 4\)"),
        (torch.randn(2, 4), "interleaved", ValueError,
         "max_min: pairing must be one of halves, pairs; got 'interleaved'"),
        (torch.randn(2, 0), "halves", ValueError, "x must not be empty outside its first 1"),
        (torch.randint(0, 3, (2, 4)), "halves", TypeError, "max_min: x must have dtype"),
        ([[1.0, 2.0]], "halves", TypeError, "max_min: x must be a torch.Tensor"),
    ],
)
def test_bad_input_is_rejected(x, pairing, error, message):
    with pytest.raises(error, match=message):
        lipkernels.max_min(x, pairing)


def test_kernel_op_rejects_bad_input():
    """The C++ op checks its own arguments: torch.ops.lipkernels.* bypasses the Python checks."""
    require_backend("cpu", "cpp")
    x = torch.randn(2, 4, 3)
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    forward, backward = torch.ops.lipkernels.max_min, torch.ops.lipkernels.max_min_backward
    # The same words and exception types as the functional API (tests/test_input_validation.py).
    cases = [
        (forward, (x[0, 0], "halves"), ValueError, "max_min: x must have at least 2 dims"),
        (forward, (x[:, :3], "halves"), ValueError,
         "max_min: x must have an even number of channels"),
        (forward, (x.int(), "halves"), TypeError, "max_min: x must have dtype float32"),
        (forward, (x, "odd"), ValueError, "max_min: pairing must be one of halves, pairs"),
        (backward, (x, mask.float(), "halves"), TypeError, "max_min_backward: mask must have dtype bool"),
        (backward, (x, mask[:, :1], "pairs"), ValueError,
         r"max_min_backward: mask must have shape \(2, 2, 3\)"),
        (backward, (x[:, :3], mask, "pairs"), ValueError,
         "max_min_backward: grad_y must have an even number"),
    ]
    for fn, args, error, message in cases:
        with pytest.raises(error, match=message):
            fn(*args)


@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_group_sort_sorts_each_group_in_descending_order(group_size):
    """GroupSort(g): each run of g consecutive channels sorted descending, so a permutation of
    each group (norms kept); GroupSort(2) is exactly MaxMin("pairs")."""
    module = lipkernels.nn.GroupSort(group_size)
    assert repr(module) == f"GroupSort(group_size={group_size})"
    assert list(module.parameters()) == [] and list(module.state_dict()) == []
    x = torch.randn(3, 4 * group_size, 2, 5, dtype=torch.float64)
    y = module(x)
    groups, out = x.unflatten(1, (4, group_size)), y.unflatten(1, (4, group_size))
    assert torch.equal(out, groups.sort(dim=2, descending=True).values)
    assert (out[:, :, :-1] >= out[:, :, 1:]).all()
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    if group_size == 2:
        assert torch.equal(y, lipkernels.max_min(x, "pairs"))
    assert lipkernels.lipschitz_bound(torch.nn.Sequential(module, torch.nn.Flatten())) == 1.0


def test_group_sort_gradient_is_the_permutation_and_ties_keep_the_order():
    """Each output gradient goes to the input it came from; of tied inputs the first channel
    takes the first (larger) output place."""
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    y = lipkernels.nn.GroupSort(3)(x)
    assert y.tolist() == [[3.0, 3.0, 1.0, 2.0, 0.5, 0.0]]
    g = torch.arange(1.0, 7.0, dtype=torch.float64)[None]
    (grad,) = torch.autograd.grad((y * g).sum(), x)
    assert grad.tolist() == [[3.0, 1.0, 2.0, 4.0, 5.0, 6.0]]
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lipkernels.nn.GroupSort(3), (x,))


def test_group_sort_keeps_nan_and_compiles():
    x = torch.randn(2, 8, 3)
    x[1, 5, 2] = float("nan")
    y = lipkernels.nn.GroupSort(4)(x)
    assert torch.isnan(y[1, 4:8, 2]).sum() == 1 and torch.isnan(y).sum() == 1
    module = lipkernels.nn.GroupSort(4)
    weights = torch.arange(8.0)[:, None]
    assert_compiled_matches_eager(lambda x: (module(x).square() * weights).sum(),
                                  torch.randn(2, 8, 3, requires_grad=True))


@pytest.mark.parametrize("group_size,x,error,message", [
    (1, None, ValueError, "GroupSort: group_size must be an int >= 2; got 1"),
    (2.0, None, ValueError, "GroupSort: group_size must be an int >= 2; got 2.0"),
    (True, None, ValueError, "GroupSort: group_size must be an int >= 2; got True"),
    (3, torch.randn(2, 4, 5), ValueError,
     r"GroupSort: x must have a multiple of group_size=3 channels \(dim 1\); "
     r"got shape \(2, 4, 5\)"),
    (3, torch.randn(6), ValueError, "GroupSort: x must have at least 2 dims"),
    (3, torch.randint(0, 3, (2, 6)), TypeError, "GroupSort: x must have dtype"),
])
def test_group_sort_rejects_bad_input(group_size, x, error, message):
    with pytest.raises(error, match=message):
        lipkernels.nn.GroupSort(group_size)(x)
