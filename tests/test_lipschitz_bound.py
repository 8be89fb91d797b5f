"""Provable Lipschitz bounds: lipkernels.bounds.skew_conv_norm_bound against the explicit Jacobian
and the exact circular norm, SOC's truncated-exponential bound against the exact supremum, the
SOC, Cayley and LipConvNet bounds against measured constants, degenerate and non-finite weights."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import bounds
from lipkernels.bounds import skew_conv_norm_bound
from lipkernels.nn import CayleyConv2d, CayleyLinear, LipConvNet, SOCConv2d, SOCLinear
from lipkernels.nn import soc
from lipkernels.nn.soc import exp_series_tail, truncated_exp_bound
from helpers import largest_singular_value, layer_jacobian


def grid_factor(points_per_degree):
    """1 / (1 - tau^2 / 2), tau = pi (p_1 / N_1 + p_2 / N_2): the size-independent bound's
    factor on the grid maximum for a square kernel and N_i = points_per_degree * p_i."""
    tau = 2 * math.pi / points_per_degree
    return 1 / (1 - tau * tau / 2)


def skew_filter(channels, k1, k2=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, channels, k1, k2 or k1, generator=generator,
                         dtype=torch.float64)
    return (weight - weight.transpose(0, 1).flip(2, 3)) / 2


def rank_one_filter(channels, k):
    """skew(u v^T (x) t): rank 2 at every frequency, most eigenvalues exactly 0."""
    generator = torch.Generator().manual_seed(1)
    u, v = torch.randn(2, channels, generator=generator, dtype=torch.float64)
    taps = torch.randn(k, k, generator=generator, dtype=torch.float64)
    weight = u[:, None, None, None] * v[None, :, None, None] * taps
    return (weight - weight.transpose(0, 1).flip(2, 3)) / 2


def zero_padded_norm(S, n1, n2):
    """The exact norm of the zero-padded "same" conv with S on n1 x n2 images (explicit matrix)."""
    size = S.shape[1] * n1 * n2
    basis = torch.eye(size, dtype=torch.float64).reshape(size, S.shape[1], n1, n2)
    matrix = F.conv2d(basis, S, padding=(S.shape[2] // 2, S.shape[3] // 2)).reshape(size, -1)
    return torch.linalg.matrix_norm(matrix, ord=2).item()


def circular_norm(S, n1, n2):
    """max ||S^(w)|| over the n1 x n2 frequency grid: the circular conv's norm on that torus
    (taps wrapping onto each other where the torus is smaller than the kernel)."""
    k1, k2 = S.shape[2:]
    w1 = 2 * math.pi * torch.arange(n1, dtype=torch.float64) / n1
    w2 = 2 * math.pi * torch.arange(n2, dtype=torch.float64) / n2
    a = torch.arange(k1, dtype=torch.float64) - k1 // 2
    b = torch.arange(k2, dtype=torch.float64) - k2 // 2
    angle = w1[:, None, None, None] * a[:, None] + w2[:, None, None] * b
    symbol = torch.einsum("ocab,uvab->uvoc", S.to(torch.complex128), torch.exp(1j * angle))
    return torch.linalg.matrix_norm(symbol, ord=2).max().item()


FILTERS = {
    "C1-k3": lambda: skew_filter(1, 3),
    "C4-k3": lambda: skew_filter(4, 3),
    "C7-k3": lambda: skew_filter(7, 3),
    "C16-k3": lambda: skew_filter(16, 3),
    "C3-k5": lambda: skew_filter(3, 5),
    "C5-k1": lambda: skew_filter(5, 1),
    "C4-k3x1": lambda: skew_filter(4, 3, 1),
    "C3-k1x5": lambda: skew_filter(3, 1, 5),
    "rank-one": lambda: rank_one_filter(6, 3),
    "tiny": lambda: skew_filter(4, 3) * 1e-150,
    "huge": lambda: skew_filter(4, 3) * 1e150,
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_bound_at_a_size_covers_every_smaller_image_and_is_tight(name):
    """Never below the explicit zero-padded norm at the size or below it; within 2% of the
    circular norm on the (n + p)-torus, the quantity it certifies (fact 2)."""
    S = FILTERS[name]()
    p1, p2 = S.shape[2] // 2, S.shape[3] // 2
    for n1, n2 in [(1, 1), (2, 2), (3, 5), (6, 6)]:
        bound = skew_conv_norm_bound(S, (n1, n2))
        for m1, m2 in {(n1, n2), (max(1, n1 - 1), n2), (1, 1)}:
            assert zero_padded_norm(S, m1, m2) <= bound, (n1, n2, m1, m2)
        certified = circular_norm(S, n1 + p1 if p1 else 1, n2 + p2 if p2 else 1)
        # Rounding margins are relative to the filter's scale: they show where the norm is 0.
        assert bound <= 1.02 * certified + 1e-10 * S.abs().sum().item(), (n1, n2, bound)


@pytest.mark.parametrize("name", ["C1-k3", "C4-k3", "C3-k5", "C4-k3x1", "rank-one", "C5-k1"])
def test_size_independent_bound_covers_the_symbol_supremum(name):
    """input_size=None: above the symbol's maximum on a 4x finer grid (and so above the norm at
    every size, e.g. 9 x 9) and within the grid factor (plus 2%) of it."""
    S = FILTERS[name]()
    bound = skew_conv_norm_bound(S)
    fine = [max(1, 128 * (k // 2)) for k in S.shape[2:]]
    supremum = circular_norm(S, *fine)
    assert supremum <= bound <= 1.02 * supremum * grid_factor(32)
    assert zero_padded_norm(S, 9, 9) <= bound


@pytest.mark.parametrize("per_degree", [6, 8, 32])
def test_grid_factor_covers_off_grid_peaks(monkeypatch, per_degree):
    """The grid maximum misses peaks between grid points (by up to a quarter on a 6-point grid),
    and 1 / (1 - tau^2 / 2) restores them: the size-independent bound on coarse grids stays above
    the supremum (a 512 x 512 grid) and within 2% of grid max times the factor."""
    monkeypatch.setattr(bounds, "_SYMBOL_GRID_PER_DEGREE", per_degree)
    losses = []
    for seed in range(8):
        S = skew_filter(2, 3, seed=seed)
        supremum, grid = circular_norm(S, 512, 512), circular_norm(S, per_degree, per_degree)
        losses.append(1 - grid / supremum)
        bound = skew_conv_norm_bound(S)
        assert supremum <= bound <= 1.02 * grid * grid_factor(per_degree), seed
    if per_degree < 32:
        assert max(losses) > 0.02


@pytest.mark.parametrize("zero", ["zero", "flip-symmetric"])
def test_zero_skew_filter_has_norm_zero(zero):
    W = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    W = torch.zeros_like(W) if zero == "zero" else W + W.transpose(0, 1).flip(2, 3)
    S = lipkernels.skew(W)
    assert skew_conv_norm_bound(S) == 0.0 and skew_conv_norm_bound(S, 5) == 0.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_filter_gives_nan(value):
    S = skew_filter(4, 3)
    S[0, 1, 0, 0], S[1, 0, 2, 2] = value, -value
    assert math.isnan(skew_conv_norm_bound(S)) and math.isnan(skew_conv_norm_bound(S, 4))


def test_bad_filters_are_rejected():
    with pytest.raises(ValueError, match="S must be skew"):
        skew_conv_norm_bound(torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match=r"S must be \(C, C, k_1, k_2\) with odd k_i"):
        skew_conv_norm_bound(torch.zeros(3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"S must be \(C, C, k_1, k_2\)"):
        skew_conv_norm_bound(torch.zeros(3, 4, 3, 3))
    with pytest.raises(ValueError, match="S must be 4-D"):
        skew_conv_norm_bound(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="input_size must be >= 1"):
        skew_conv_norm_bound(skew_filter(2, 3), 0)


def test_certificate_recovers_from_a_wrong_candidate(monkeypatch):
    """The Lanczos candidate is only a starting point. Half the true norm fails the Cholesky
    certificate, and a longer Lanczos run at the failed frequencies recovers; candidates that
    stay low are raised geometrically; no candidate at all leaves the triangle-inequality cap
    sum_k ||S_k||_F. All stay above the exact norm."""
    S = skew_filter(24, 3)
    exact = circular_norm(S, 5, 5)
    assert exact <= skew_conv_norm_bound(S, 4) <= 1.03 * exact
    estimate, calls = bounds._Lanczos.estimate, []

    def low_once(self, steps):
        calls.append(steps)
        return estimate(self, steps) / (2 if len(calls) == 1 else 1)

    monkeypatch.setattr(bounds._Lanczos, "estimate", low_once)
    assert exact <= skew_conv_norm_bound(S, 4) <= 1.03 * exact
    assert calls == [bounds._LANCZOS_STEPS, 3 * bounds._LANCZOS_STEPS]  # the retry runs longer
    monkeypatch.setattr(bounds._Lanczos, "estimate", lambda self, steps: estimate(self, steps) / 2)
    assert exact <= skew_conv_norm_bound(S, 4) <= 2.6 * exact
    monkeypatch.setattr(bounds._Lanczos, "estimate", lambda self, steps: 0.0)
    cap = sum(torch.linalg.matrix_norm(S[:, :, a, b]).item() for a in range(3) for b in range(3))
    assert skew_conv_norm_bound(S, 4) == pytest.approx(cap, rel=1e-12)


def _symbols_and_phases(channels, kernel, grid, dtype, sign):
    S = skew_filter(channels, kernel)
    index, _ = bounds._representatives(grid, "cpu")
    cos, sin = bounds._phases((kernel, kernel), grid, index)
    taps = S.permute(2, 3, 0, 1).reshape(kernel * kernel, channels, channels).to(dtype)
    signs = torch.full((len(index),), float(sign), dtype=torch.float64)
    return S, index, taps, bounds._signed_phases(cos, sin, signs, dtype)


def test_factorization_accepts_exactly_the_shifts_above_the_top_eigenvalue():
    """The sign conventions of the certificate: shift I + X^T, X = -conj(H) (sign 1) or H
    (sign -1), factorises iff shift > lambda_max(+-H), at every frequency."""
    grid = (4, 5)
    S, index, taps, phases = _symbols_and_phases(6, 3, grid, torch.float64, -1)
    H = bounds._signed_symbols(taps, phases)
    torch.testing.assert_close(H, H.mH, rtol=0, atol=1e-14)
    # H(w) = i S^(w): its eigenvalues' moduli are the circular conv's singular values.
    singular = lipkernels.conv_singular_values(S, grid).flatten(0, 1)[index]
    torch.testing.assert_close(torch.linalg.eigvalsh(H).abs().sort(-1).values,
                               singular.sort(-1).values, rtol=0, atol=1e-12)
    for sign in (1, -1):
        tops = (sign * torch.linalg.eigvalsh(H)).max(-1).values
        _, _, _, signed = _symbols_and_phases(6, 3, grid, torch.float64, sign)
        for factor, expected in ((1 - 1e-6, False), (1 + 1e-6, True)):
            for row, top in enumerate(tops.tolist()):
                X = bounds._signed_symbols(taps, signed[:, row:row + 1])
                assert bool(bounds._factorizes(X, top * factor)) is expected, (sign, row)


@pytest.mark.skipif(not lipkernels._backend.extension_loaded(), reason="needs lipkernels._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels, kernel, grid", [(6, 3, (4, 5)), (40, 3, (3, 3)),
                                                    (70, 1, (1, 1)), (9, 5, (6, 6))])
def test_cpu_kernel_decides_as_the_composite(channels, kernel, grid, dtype):
    """torch.ops.lipkernels.symbols_factorize succeeds exactly where the composite (symbols by
    a product, torch.linalg.cholesky_ex) does, at shifts just below and just above each row's
    top eigenvalue, for both signs."""
    for sign in (1, -1):
        _, _, taps, phases = _symbols_and_phases(channels, kernel, grid, dtype, sign)
        G = -bounds._signed_symbols(taps.double(), phases.double()).mT  # shift I + X^T = shift I - G
        tops = torch.linalg.eigvalsh(G)[:, -1]
        for factor in (1 - 1e-3, 1 + 1e-3):
            for row, top in enumerate(tops.tolist()):
                one = phases[:, row:row + 1]
                kernel_says = torch.ops.lipkernels.symbols_factorize(taps, one, top * factor)
                composite = bounds._factorizes(bounds._signed_symbols(taps, one), top * factor)
                assert kernel_says.dtype == torch.bool and kernel_says.shape == (1,)
                assert torch.equal(kernel_says, composite), (sign, row, factor)
                assert bool(kernel_says) == (factor > 1), (sign, row, factor)


@pytest.mark.skipif(not lipkernels._backend.extension_loaded(), reason="needs lipkernels._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [None, 4])
def test_bounds_are_the_same_without_the_cpu_kernel(monkeypatch, input_size, dtype):
    """The composite path (no extension, or another device) certifies the same bounds, quick
    and tight."""
    S = skew_filter(12, 3).to(dtype)
    with_kernel = [skew_conv_norm_bound(S, input_size),
                   skew_conv_norm_bound(S, input_size, sufficient=10.0)]
    monkeypatch.setattr(lipkernels._backend, "extension_loaded", lambda: False)
    assert [skew_conv_norm_bound(S, input_size),
            skew_conv_norm_bound(S, input_size, sufficient=10.0)] == with_kernel


@pytest.mark.skipif(not lipkernels._backend.extension_loaded(), reason="needs lipkernels._C")
def test_cpu_kernel_opcheck():
    _, _, taps, phases = _symbols_and_phases(6, 3, (4, 5), torch.float32, 1)
    torch.library.opcheck(torch.ops.lipkernels.symbols_factorize, (taps, phases, 2.0))


@pytest.mark.skipif(not lipkernels._backend.extension_loaded(), reason="needs lipkernels._C")
def test_cpu_kernel_refuses_bad_arguments():
    taps = torch.zeros(9, 4, 4)
    with pytest.raises(TypeError, match="symbols_factorize: taps must have dtype float32, float64"):
        torch.ops.lipkernels.symbols_factorize(taps.half(), torch.zeros(2, 3, 9).half(), 1.0)
    with pytest.raises(ValueError, match=r"symbols_factorize: taps must be \(K, C, C\)"):
        torch.ops.lipkernels.symbols_factorize(torch.zeros(9, 4, 5), torch.zeros(2, 3, 9), 1.0)
    with pytest.raises(ValueError, match=r"symbols_factorize: phases must have shape \(2, 3, 9\)"):
        torch.ops.lipkernels.symbols_factorize(taps, torch.zeros(2, 3, 8), 1.0)
    with pytest.raises(TypeError, match="symbols_factorize: phases has dtype torch.float64"):
        torch.ops.lipkernels.symbols_factorize(taps, torch.zeros(2, 3, 9, dtype=torch.float64), 1.0)


def test_frequency_batches_give_the_same_bound(monkeypatch):
    S = skew_filter(5, 3)
    whole = skew_conv_norm_bound(S)
    monkeypatch.setattr(bounds, "_BATCH_BYTES", 3 * 25 * 16)  # three 5 x 5 complex128 symbols
    assert skew_conv_norm_bound(S) == whole


def test_float32_filters_are_bounded_exactly():
    """A float32 filter is bounded as the float64 filter with the same values."""
    S = skew_filter(6, 3).float()
    assert zero_padded_norm(S.double(), 4, 4) <= skew_conv_norm_bound(S, 4)
    assert skew_conv_norm_bound(S, 4) <= 1.02 * circular_norm(S.double(), 5, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["C4-k3", "C16-k3", "C3-k5", "C5-k1", "C4-k3x1", "rank-one"])
def test_quick_certificate_covers_the_norm_and_honours_sufficient(name, dtype):
    """`sufficient`: the quick certificate (6 Lanczos steps, single-precision factorisations for
    float32 filters) is never below the circular norm it certifies nor the zero-padded norm, is
    returned when at or below `sufficient`, and where it cannot get there the tight bound is."""
    S = FILTERS[name]().to(dtype)
    p1, p2 = S.shape[2] // 2, S.shape[3] // 2
    certified = circular_norm(S.double(), 4 + p1 if p1 else 1, 4 + p2 if p2 else 1)
    quick = skew_conv_norm_bound(S, 4, sufficient=math.inf)
    assert zero_padded_norm(S.double(), 4, 4) <= quick
    assert certified <= quick <= 1.35 * certified
    assert certified <= skew_conv_norm_bound(S, 4, sufficient=1.4 * certified) <= 1.4 * certified
    tight = skew_conv_norm_bound(S, 4)
    assert skew_conv_norm_bound(S, 4, sufficient=0.9 * certified) == tight


@pytest.mark.parametrize("channels", [8, 32, 96])
def test_single_precision_certificate_holds_on_many_filters(channels, monkeypatch):
    """The single-precision certificate, with its rounding margin (about 4 n^2 u), stays above
    the exact grid maximum (float64 eigenvalues) on random float32 filters; it is the one used."""
    used = []
    certify = bounds._certify
    monkeypatch.setattr(bounds, "_certify", lambda c, precision, *args: (
        used.append(precision) or certify(c, precision, *args)))
    for seed in range(6):
        S = skew_filter(channels, 3, seed=seed).float()
        certified = circular_norm(S.double(), 5, 5)
        assert certified <= skew_conv_norm_bound(S, 4, sufficient=math.inf), seed
    assert used == [bounds._SINGLE] * 6


@pytest.mark.parametrize("precision", ["_SINGLE", "_DOUBLE"])
def test_margin_level_is_the_inverse_of_the_margin(precision):
    """`_Margin.level(shift)` is the mu whose certificate factorises at `shift`: mu - of(mu) is
    shift (to rounding) and never below it; a precision too coarse for n has no level."""
    margin = bounds._Margin(getattr(bounds, precision), 300, 0.7, 1e-9)
    for shift in (1e-3, 1.0, 250.0):
        mu = margin.level(shift)
        assert shift <= mu - margin.of(mu) <= shift * (1 + 1e-12) + 1e-15
    assert bounds._Margin(bounds._SINGLE, 8192, 0.0, 0.0).level(1.0) == math.inf


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30, 0.0])
def test_frobenius_cap_bounds_the_sum_of_tap_norms(scale):
    """The cap sum_k ||S_k||_F: above the exact sum and within 1% of it, from float32 norms
    where their rounding bound serves, from float64 where the squares underflow or overflow."""
    generator = torch.Generator().manual_seed(3)
    taps = (torch.randn(9, 40, 40, generator=generator, dtype=torch.float64) * scale).float()
    exact = sum(torch.linalg.matrix_norm(tap.double()).item() for tap in taps)
    cap = bounds._frobenius_sum_bound(taps)
    assert exact <= cap <= 1.01 * exact
    assert (cap == 0) is (scale == 0)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(8, 8, 3, 1, 6), (12, 12, 1, 1, 1), (4, 6, 5, 1, 7)])
def test_soc_tolerance_costs_at_most_that_much_tightness(shape, mode):
    """The default tolerance 2^-20 lets float32 layers take the quick certificate wherever the
    bound moves by less than that: above the measured constant, and within (1 + 2^-20) of the
    bound with tolerance 0 (plus the lower estimate's own looseness, well below 2^-20)."""
    in_channels, out_channels, k, stride, size = shape
    layer = SOCConv2d(in_channels, out_channels, k, stride, bias=False).train(mode == "train")
    tight = layer.lipschitz_bound(size, tolerance=0)
    quick = layer.lipschitz_bound(size)
    reference = SOCConv2d(in_channels, out_channels, k, stride, bias=False).double()
    reference.load_state_dict(layer.state_dict())
    reference.train(mode == "train")
    measured = largest_singular_value(layer_jacobian(reference, (in_channels, size, size)))
    assert measured <= quick * (1 + 1e-6) and measured <= tight * (1 + 1e-6)
    assert quick <= tight * (1 + 2 * soc.BOUND_TOLERANCE)


def test_tolerance_and_sufficient_are_checked():
    for bad, error in ((-1e-3, ValueError), (math.nan, ValueError), ("0.1", TypeError),
                       (True, TypeError)):
        with pytest.raises(error, match="SOCConv2d: tolerance must be"):
            SOCConv2d(2, 2).lipschitz_bound(tolerance=bad)
        with pytest.raises(error, match="SOCLinear: tolerance must be"):
            SOCLinear(2, 2).lipschitz_bound(tolerance=bad)
        with pytest.raises(error, match="LipConvNet: tolerance must be"):
            LipConvNet(10, init_channels=2).lipschitz_bound(tolerance=bad)
        with pytest.raises(error, match="skew_conv_norm_bound: sufficient must be"):
            skew_conv_norm_bound(skew_filter(2, 3), sufficient=bad)


@pytest.mark.parametrize("terms", [4, 6, 15])
def test_series_tolerance_and_estimate_from_below(terms):
    """truncated_exp_bound with a tolerance: 1 + the tail bound once that is within tolerance
    of 1 (still above the supremum), the supremum otherwise; series_modulus_below never above
    the supremum."""
    for a in (0.3, 1.0, 1.7, 2.6, 3.5):
        exact = truncated_exp_bound(a, terms)
        loose = truncated_exp_bound(a, terms, 2.0 ** -20)
        assert exact <= loose <= exact + 2.0 ** -20
        if exp_series_tail(a, terms) > 2.0 ** -20:
            assert loose == exact
        assert 1 <= soc.series_modulus_below(a, terms) <= exact


def exact_squared_modulus(x: Fraction, terms: int) -> Fraction:
    """|T(ix)|^2 in exact arithmetic, T(z) = sum_{j<terms} z^j / j!."""
    real = sum(Fraction((-1) ** (j // 2), math.factorial(j)) * x ** j for j in range(0, terms, 2))
    imag = sum(Fraction((-1) ** (j // 2), math.factorial(j)) * x ** j for j in range(1, terms, 2))
    return real * real + imag * imag


@pytest.mark.parametrize("terms", [1, 2, 3, 4, 6, 9, 15])
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0, 1.006, 1.7, 3.0, 5.0])
def test_truncated_exp_bound_is_the_supremum(terms, a):
    """Above |T(ix)| at 200 exact rational points of [0, a], so above its maximum up to the grid;
    within a relative 1e-3 of that maximum's excess over 1 (plus rounding); never above the
    series-tail bound 1 + sum_{i>=terms} a^i / i! it replaces."""
    bound = truncated_exp_bound(a, terms)
    grid_max = max(exact_squared_modulus(Fraction(a) * j / 200, terms) for j in range(201))
    assert math.sqrt(grid_max) <= bound or grid_max <= Fraction(bound) ** 2
    assert bound <= 1 + (math.sqrt(grid_max) - 1) * 1.001 + 1e-15
    assert bound <= math.nextafter(1 + exp_series_tail(a, terms) * (1 + 2 ** -40), math.inf)


def test_truncated_exp_bound_special_values():
    assert math.isnan(truncated_exp_bound(math.nan, 6))
    assert truncated_exp_bound(math.inf, 6) == math.inf
    assert truncated_exp_bound(1e4, 6) > 1e17
    # Four terms: a contraction for x^2 <= 3 (|T(ix)|^2 = 1 - x^4 / 12 + x^6 / 36).
    assert truncated_exp_bound(1.7, 4) <= 1 + 1e-12
    # Six terms: flat at max |T(ix)| = 1.00474 from x = 1.6 to 3.3 (not 1 + tail = 2.69 at 3).
    assert truncated_exp_bound(1.6, 6) == pytest.approx(truncated_exp_bound(3.3, 6), abs=2e-6)
    assert truncated_exp_bound(3.0, 6) < 1.0048


# (in, out, k, stride, image): LipConvNet-like shapes, 5x5 and 7x7, stride 2, channel changes.
LAYERS = [(4, 4, 3, 1, 6), (8, 8, 3, 1, 5), (3, 5, 3, 2, 6), (4, 4, 5, 1, 6), (5, 5, 7, 1, 7),
          (12, 12, 1, 1, 1), (2, 6, 3, 2, 4)]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", LAYERS)
def test_soc_bound_covers_and_nearly_equals_the_measured_constant(case, mode):
    """Above the largest singular value of the layer's explicit Jacobian, for the size given and
    for every size; as tight as the math allows: within 1% of the measured constant in eval, and
    in training (6 terms, where the old Fantastic Four bound was 2.69 for 3x3 and 58 for 5x5)
    at most 1.0048 with an excess over 1 within 1.5 times the measured one (in == out)."""
    in_channels, out_channels, k, stride, size = case
    layer = SOCConv2d(in_channels, out_channels, k, stride, bias=False).double()
    layer.train(mode == "train")
    at_size, every_size = layer.lipschitz_bound(size), layer.lipschitz_bound()
    measured = largest_singular_value(layer_jacobian(layer, (in_channels, size, size)))
    assert measured <= at_size and measured <= every_size
    assert every_size <= 1.01 * measured
    if mode == "train":
        assert every_size < 1.0048
        if in_channels * stride ** 2 == out_channels:
            assert at_size - 1 <= 1.5 * (measured - 1)


def test_soc_bound_at_a_size_covers_smaller_and_non_square_images():
    layer = SOCConv2d(3, 3, 3, bias=False, train_terms=3, correction=1.5).double()
    bound = layer.lipschitz_bound((6, 4))
    for shape in [(6, 4), (3, 4), (1, 1), (5, 2)]:
        assert largest_singular_value(layer_jacobian(layer, (3, *shape))) <= bound, shape
    # Three terms and a correction: the series expands, and the bound follows it.
    assert bound > 1.2


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("zero", ["zero", "flip-symmetric"])
def test_zero_skew_soc_is_the_identity_with_bound_one(zero, mode):
    layer = SOCConv2d(4, 4, 3, bias=False).double().train(mode == "train")
    with torch.no_grad():
        W = layer.weight
        W.copy_(torch.zeros_like(W) if zero == "zero" else W + W.transpose(0, 1).flip(2, 3))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x, rtol=0, atol=0)
    assert layer.lipschitz_bound() == layer.lipschitz_bound(5) == math.nextafter(1.0, 2.0)
    # The gradient at the zero weight is finite (zero: S_n = 0 near it in every direction).
    layer(x).square().sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_soc_weight_gives_nan_output_and_bound(value, mode):
    for layer, x in [(SOCConv2d(3, 4, 3, stride=2), torch.randn(2, 3, 4, 4)),
                     (SOCLinear(5, 3), torch.randn(2, 5))]:
        layer.train(mode == "train")
        with torch.no_grad():
            layer.weight.view(-1)[1] = value
        assert torch.isnan(layer(x)).any()
        bound = layer.lipschitz_bound()
        assert math.isnan(bound)
        if isinstance(layer, SOCConv2d):
            assert math.isnan(layer.lipschitz_bound(4))


def test_soc_input_size_is_checked():
    with pytest.raises(ValueError, match="SOCConv2d: with stride=2 input_size must be even"):
        SOCConv2d(2, 4, stride=2).lipschitz_bound(5)
    with pytest.raises(TypeError, match="SOCConv2d: input_size must be an int or a pair"):
        SOCConv2d(2, 4).lipschitz_bound(5.0)
    with pytest.raises(ValueError, match="SOCConv2d: input_size must be >= 1"):
        SOCConv2d(2, 4).lipschitz_bound((4, 0))
    with pytest.raises(TypeError):
        SOCLinear(2, 4).lipschitz_bound(4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lipconvnet_bound_is_the_product_at_the_sizes_it_feeds(mode):
    net = LipConvNet(10, init_channels=2).double().train(mode == "train")
    expected, size = 1.0, 32
    for layer in net.features:
        if isinstance(layer, SOCConv2d):
            expected *= layer.lipschitz_bound(size)
            size //= layer.stride
    expected *= net.head.lipschitz_bound()
    bound = net.lipschitz_bound()
    # The product is rounded up by an ulp at each of its 11 multiplications.
    assert expected <= bound <= expected * (1 + 2.0 ** -48)
    assert bound <= math.prod(layer.lipschitz_bound() for layer in net.soc_layers()) * (1 + 1e-6)
    assert bound < (1.0048 ** 11 if mode == "train" else 1 + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cayley_bound_is_one_and_covers_the_measured_constant(dtype, mode):
    """1 in exact arithmetic; the computed map is orthogonal up to rounding (2e-6 in float32)."""
    tolerance = 2e-6 if dtype == torch.float32 else 1e-13
    for layer, shape in [(CayleyConv2d(4, 6, 3, bias=False), (4, 6, 6)),
                         (CayleyConv2d(3, 5, 3, stride=2, bias=False), (3, 6, 6)),
                         (CayleyLinear(12, 7, bias=False), (12,))]:
        layer = layer.to(dtype).train(mode == "train")
        bound = layer.lipschitz_bound()
        assert bound == 1.0
        measured = largest_singular_value(layer_jacobian(layer.double(), shape))
        assert measured <= bound + tolerance


def test_cayley_bound_of_degenerate_parameters():
    for layer in (CayleyConv2d(3, 3, 3), CayleyLinear(4, 4)):
        with torch.no_grad():
            layer.weight.zero_()
        assert layer.lipschitz_bound() == 1.0
        for name in ("weight", "alpha"):
            broken = type(layer)(3, 3) if isinstance(layer, CayleyConv2d) else CayleyLinear(4, 4)
            with torch.no_grad():
                broken.get_parameter(name).view(-1)[0] = math.nan
            assert math.isnan(broken.lipschitz_bound()), name
