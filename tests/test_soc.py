"""SOCConv2d / SOCLinear: the measured Lipschitz constant against lipschitz_bound (with the series
tail), orthogonality in eval, the reference composition, train/eval term counts and power-iteration
schedule, the eval cache, state_dict, extra_repr, bad arguments, backends, autocast and
torch.compile."""

import copy
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels.nn import SOCConv2d, SOCLinear
from lipkernels.nn.soc import exp_series_tail
from lipkernels._spectral import bound_matrices
from helpers import largest_singular_value, layer_jacobian, require_backend

SIZE = 6  # spatial size of the explicit-Jacobian inputs: small enough for a dense SVD

# (in_channels, out_channels, kernel_size, stride): square, channel growth and shrink, k = 1, 3,
# with and without pixel_unshuffle.
CONV_CASES = [(4, 4, 3, 1), (3, 5, 3, 1), (5, 3, 3, 1), (4, 4, 1, 1), (2, 6, 1, 1),
              (2, 12, 3, 2), (3, 5, 3, 2), (4, 6, 1, 2)]


def vectors_of(layer):
    return [t.clone() for t in (layer.u1, layer.u2, layer.u3, layer.u4)]


def expected_filter(layer, vectors):
    """S_n by hand: one reference power iteration in training, the Rayleigh estimate in eval."""
    S = reference.skew(layer.weight)
    if layer.training:
        sigma = reference.fantastic_four(S, 1, vectors)[0] / layer.kernel_size
    else:
        sigma = min(torch.linalg.vector_norm(m @ u) for m, u in zip(bound_matrices(S), vectors))
    return layer.correction * S / sigma


def expected_output(layer, x, terms, vectors):
    """pixel_unshuffle, zero-pad channels, reference series, slice, bias: the layer by hand."""
    linear = x.dim() == 2
    if linear:
        x = x[:, :, None, None]
    if layer.stride == 2:
        x = F.pixel_unshuffle(x, 2)
    x = F.pad(x, (0, 0, 0, 0, 0, layer.channels - x.shape[1]))
    y = reference.soc_exp(x, expected_filter(layer, vectors), terms)[:, :layer.out_channels]
    if layer.bias is not None:
        y = y + layer.bias.view(1, -1, 1, 1)
    return y.flatten(1) if linear else y


def make(case, mode="eval", **kwargs):
    in_channels, out_channels, k, stride = case
    layer = SOCConv2d(in_channels, out_channels, k, stride, **kwargs).double()
    return layer.train(mode == "train")


def test_exp_series_tail_is_an_upper_bound_close_to_the_sum():
    """Against the rational sum to i = 400: equal up to float64 rounding (which lipschitz_bound
    covers with its margin), never smaller by more than that."""
    for a in (0.1, 1.0, 3.0, 9.0, 40.0):
        for terms in (1, 2, 6, 15):
            exact = float(sum(Fraction(a) ** i / math.factorial(i) for i in range(terms, 400)))
            tail = exp_series_tail(a, terms)
            assert exact * (1 - 1e-14) <= tail <= exact * (1 + 1e-13), (a, terms, tail, exact)
    assert exp_series_tail(0.0, 1) == 0.0
    assert exp_series_tail(1e4, 6) == math.inf
    # Where e^a - partial sum would cancel to nothing, the upward sum keeps the digits.
    assert exp_series_tail(0.5, 15) == pytest.approx(0.5 ** 15 / math.factorial(15), rel=1e-3)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_measured_lipschitz_constant_is_within_the_bound(case, mode):
    layer = make(case, mode, bias=False)
    bound = layer.lipschitz_bound()  # before the forward: it describes the next call's map
    measured = largest_singular_value(layer_jacobian(layer, (case[0], SIZE, SIZE)))
    assert 0.5 < measured <= bound
    assert bound < 3.0  # a <= k * correction = 3: the bound is at most 1 + tail(3, 6) ~ 2.69


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("in_features,out_features", [(5, 5), (6, 3), (3, 6)])
def test_linear_measured_lipschitz_constant_is_within_the_bound(in_features, out_features, mode):
    layer = SOCLinear(in_features, out_features, bias=False).double().train(mode == "train")
    bound = layer.lipschitz_bound()
    measured = largest_singular_value(layer_jacobian(layer, (in_features,)))
    assert 0.5 < measured <= bound


@pytest.mark.parametrize("terms", [2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bound_covers_the_truncation_tail(terms, mode):
    """Few terms and a large correction: the layer expands (for skew A, ||I + A||^2 = 1 + ||A||^2,
    and |1 + i t - t^2 / 2|^2 = 1 + t^4 / 4), so 1 is not a bound, and the tail term covers it."""
    layer = make((4, 4, 3, 1), mode, bias=False, correction=3.0, train_terms=terms,
                 eval_terms=terms)
    bound = layer.lipschitz_bound()
    measured = largest_singular_value(layer_jacobian(layer, (4, SIZE, SIZE)))
    assert measured > 1.5
    assert measured <= bound


@pytest.mark.parametrize("case", [(4, 4, 3, 1), (3, 3, 5, 1), (5, 5, 1, 1), (2, 8, 3, 2)])
def test_eval_with_many_terms_is_orthogonal(case):
    """in == out (after unshuffle for stride 2): nothing is sliced off, T(A) ~ exp(A)."""
    layer = make(case, "eval", bias=False, eval_terms=40)
    singular_values = torch.linalg.svdvals(layer_jacobian(layer, (case[0], SIZE, SIZE)))
    assert (singular_values - 1).abs().max().item() < 1e-10
    assert 1.0 <= layer.lipschitz_bound() < 1 + 1e-9


def test_linear_eval_with_many_terms_is_orthogonal():
    layer = SOCLinear(7, 7, bias=False, eval_terms=40).double().eval()
    singular_values = torch.linalg.svdvals(layer_jacobian(layer, (7,)))
    assert (singular_values - 1).abs().max().item() < 1e-10


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_output_is_the_reference_composition(case, mode):
    layer = make(case, mode, correction=0.8)
    x = torch.randn(2, case[0], SIZE, SIZE, dtype=torch.float64)
    before = vectors_of(layer)
    expected = expected_output(layer, x, layer.terms, before)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_linear_output_is_the_reference_composition():
    layer = SOCLinear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    for mode in (True, False):
        layer.train(mode)
        before = vectors_of(layer)
        torch.testing.assert_close(layer(x), expected_output(layer, x, layer.terms, before),
                                   rtol=1e-10, atol=1e-12)


def test_linear_is_the_one_by_one_convolution():
    linear, conv = SOCLinear(5, 3).double(), SOCConv2d(5, 3, kernel_size=1).double()
    conv.load_state_dict(linear.state_dict())
    x = torch.randn(4, 5, dtype=torch.float64)
    for mode in (True, False):
        linear.train(mode), conv.train(mode)
        assert torch.equal(linear(x), conv(x[:, :, None, None]).flatten(1))


@pytest.mark.parametrize("mode,attribute", [("train", "train_terms"), ("eval", "eval_terms")])
def test_each_mode_uses_its_term_count(mode, attribute):
    layer = make((3, 4, 3, 1), mode, train_terms=4, eval_terms=9)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    before = vectors_of(layer)
    output = layer(x)
    matches = [terms for terms in range(1, 16)
                if torch.allclose(output, expected_output(layer, x, terms, before),
                                  rtol=1e-10, atol=1e-12)]
    assert matches == [getattr(layer, attribute)]


def test_vectors_update_in_training_only():
    layer = make((4, 4, 3, 1), "train")
    x = torch.randn(2, 4, SIZE, SIZE, dtype=torch.float64)
    before = vectors_of(layer)
    layer(x)
    after = vectors_of(layer)
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    # The stored vectors are the reference's one-iteration update of the previous ones.
    _, expected = reference.fantastic_four(reference.skew(layer.weight), 1, before)
    torch.testing.assert_close(after, list(expected), rtol=1e-10, atol=1e-12)
    layer.eval()
    layer(x)
    with torch.no_grad():
        layer(x)
    assert all(torch.equal(a, b) for a, b in zip(vectors_of(layer), after))


def test_eval_cache_follows_weight_and_vector_changes():
    layer = make((4, 4, 3, 1), "eval")
    x = torch.randn(2, 4, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad(), lipkernels.nn.cached():
        first = layer(x)
        assert layer._eval_cache is not None and torch.equal(layer(x), first)
        layer.weight.mul_(1.5).add_(0.1 * torch.randn_like(layer.weight))  # an optimizer step
        changed = layer(x)
        torch.testing.assert_close(changed, expected_output(layer, x, 15, vectors_of(layer)),
                                   rtol=1e-10, atol=1e-12)
        assert not torch.allclose(changed, first)
        layer.update_vectors(3)
        torch.testing.assert_close(layer(x), expected_output(layer, x, 15, vectors_of(layer)),
                                   rtol=1e-10, atol=1e-12)
        # With a weight gradient needed the filter is rebuilt with its graph.
        with torch.enable_grad():
            layer(x).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().max() > 0


def test_state_dict_round_trip_reproduces_outputs():
    source = SOCConv2d(3, 6, stride=2, correction=0.9)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        source(x)
    state = source.state_dict()
    assert set(state) == {"weight", "bias", "u1", "u2", "u3", "u4"}
    target = SOCConv2d(3, 6, stride=2, correction=0.9)
    target.eval()
    with torch.no_grad(), lipkernels.nn.cached():
        target(x)  # fills target's eval cache, which loading must invalidate
        target.load_state_dict(state)
        source.eval()
        assert torch.equal(target(x), source(x))
    source.train(), target.train()
    assert torch.equal(target(x), source(x))
    assert all(torch.equal(a, b) for a, b in zip(vectors_of(target), vectors_of(source)))


def test_extra_repr():
    conv = SOCConv2d(3, 8, kernel_size=5, stride=2, bias=False, train_terms=5, eval_terms=12,
                     correction=0.7, grad_mode="fast")
    assert conv.extra_repr() == ("in_channels=3, out_channels=8, kernel_size=5, stride=2, "
                                 "channels=12, bias=False, train_terms=5, eval_terms=12, "
                                 "correction=0.7, grad_mode='fast'")
    linear = SOCLinear(4, 10)
    assert linear.extra_repr() == ("in_features=4, out_features=10, channels=10, bias=True, "
                                   "train_terms=6, eval_terms=15, correction=1.0, "
                                   "grad_mode='exact'")
    assert "SOCLinear(in_features=4" in repr(linear)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"kernel_size": 4}, ValueError, "SOCConv2d: kernel_size must be odd"),
        ({"kernel_size": 0}, ValueError, "SOCConv2d: kernel_size must be >= 1"),
        ({"stride": 3}, ValueError, "SOCConv2d: stride must be 1 or 2"),
        ({"train_terms": 0}, ValueError, "SOCConv2d: train_terms must be >= 1"),
        ({"eval_terms": 0}, ValueError, "SOCConv2d: eval_terms must be >= 1"),
        ({"eval_terms": 2.5}, TypeError, "SOCConv2d: eval_terms must be an int"),
        ({"in_channels": 0}, ValueError, "SOCConv2d: in_channels must be >= 1"),
        ({"out_channels": -2}, ValueError, "SOCConv2d: out_channels must be >= 1"),
        ({"grad_mode": "approx"}, ValueError, "SOCConv2d: grad_mode must be one of exact, fast"),
        ({"correction": 0.0}, ValueError, "SOCConv2d: correction must be a finite number > 0"),
        ({"correction": math.nan}, ValueError, "correction must be a finite number"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    arguments = {"in_channels": 3, "out_channels": 4, **kwargs}
    with pytest.raises(error, match=message):
        SOCConv2d(**arguments)


def test_bad_linear_constructor_arguments():
    with pytest.raises(ValueError, match="SOCLinear: in_features must be >= 1"):
        SOCLinear(0, 3)
    with pytest.raises(ValueError, match="SOCLinear: train_terms must be >= 1"):
        SOCLinear(3, 3, train_terms=0)


@pytest.mark.parametrize(
    "layer,x,error,message",
    [
        (SOCConv2d(3, 4), torch.randn(3, 6, 6), ValueError, r"SOCConv2d: input must be 4-D"),
        (SOCConv2d(3, 4), torch.randn(1, 4, 6, 6), ValueError,
         "SOCConv2d: input has size 4 at dim 1 but in_channels=3"),
        (SOCConv2d(3, 4, stride=2), torch.randn(1, 3, 6, 5), ValueError,
         "SOCConv2d: with stride=2 the input height and width must be even"),
        (SOCConv2d(3, 4), torch.randn(1, 3, 6, 6, dtype=torch.float64), TypeError,
         "SOCConv2d: input dtype torch.float64 differs"),
        (SOCLinear(3, 4), torch.randn(2, 3, 1, 1), ValueError, r"SOCLinear: input must be 2-D"),
        (SOCLinear(3, 4), torch.randn(2, 5), ValueError,
         "SOCLinear: input has size 5 at dim 1 but in_features=3"),
    ],
)
def test_bad_forward_input(layer, x, error, message):
    with pytest.raises(error, match=message):
        layer(x)


def _run_with_gradients(layer, x, backend):
    x = x.clone().requires_grad_()
    with lipkernels.use_backend(backend):
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad, *vectors_of(layer)


@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backends_agree(mode, grad_mode):
    require_backend("cpu", "cpp")
    layer = make((3, 5, 3, 2), mode, grad_mode=grad_mode)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    expected = _run_with_gradients(copy.deepcopy(layer), x, "reference")
    actual = _run_with_gradients(copy.deepcopy(layer), x, "cpp")
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_autocast_bfloat16(mode):
    layer = SOCConv2d(4, 6, stride=2).train(mode == "train")
    x = torch.randn(2, 4, 8, 8)
    full = copy.deepcopy(layer)
    # The reference power iteration uses matmul, which CPU autocast would run in bfloat16: equal
    # vectors show the normalisation really stayed in float32.
    with lipkernels.use_backend("reference"):
        expected = full(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=0, atol=0.05 * expected.abs().max().item())
    assert all(v.dtype == torch.float32 for v in vectors_of(layer))
    assert all(torch.equal(a, b) for a, b in zip(vectors_of(layer), vectors_of(full)))
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().max() > 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_compile_fullgraph(mode):
    """The forward (with the training buffer update) traces into one graph and matches eager."""
    torch._dynamo.reset()
    eager = SOCConv2d(3, 5, stride=2).train(mode == "train")
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, SIZE, SIZE)
    for _ in range(2):  # the second call checks that the updated buffers are read back
        expected, actual = eager(x), compiled(x)
        torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(vectors_of(compiled_layer), vectors_of(eager))
    if mode == "eval":  # eager mode reuses S_n inside cached(); compiled code recomputes it
        with torch.no_grad(), lipkernels.nn.cached():
            torch.testing.assert_close(compiled(x), eager(x))
    expected.square().sum().backward()
    actual.square().sum().backward()
    torch.testing.assert_close(compiled_layer.weight.grad, eager.weight.grad)
    torch.testing.assert_close(compiled_layer.bias.grad, eager.bias.grad)
