"""lipkernels.certify and the certification losses: radii never above the true distance to the
decision boundary, the accuracy they imply, nan in nan out, and clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels.certification import (certificate_regularized_loss, certified_margin,
                                      tau_cross_entropy)


def test_radii_and_accuracy_of_a_small_case():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 0, 0])
    result = lipkernels.certify(logits, labels, 2.0, [0.0, 0.3, 0.5])
    # margins 2, 1, 0 (a tie), -5 over sqrt(2) * 2
    expected = torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64) / (2 * math.sqrt(2))
    torch.testing.assert_close(result.radii, expected, rtol=1e-14, atol=0)
    assert (result.radii <= expected).all()  # rounded down
    assert result.accuracy.tolist() == [0.5, 0.5, 0.25]
    assert result.eps == (0.0, 0.3, 0.5)
    assert lipkernels.certify(logits, labels, 2.0).accuracy.shape == (1,)


@pytest.mark.parametrize("seed", range(5))
def test_radii_never_exceed_the_distance_to_the_decision_boundary(seed):
    """For a linear classifier f(x) = W x with L = ||W||_2, the nearest input of another class
    j is at m_j / ||w_y - w_j|| (exactly); the certified radius is at most the smallest."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(6, 20, dtype=torch.float64, generator=generator)
    x = torch.randn(50, 20, dtype=torch.float64, generator=generator)
    logits = x @ W.T
    labels = torch.randint(0, 6, (50,), generator=generator)
    radii = lipkernels.certify(logits, labels, torch.linalg.matrix_norm(W, 2).item()).radii
    for b in range(50):
        y = labels[b]
        distances = [(logits[b, y] - logits[b, j]) / torch.linalg.vector_norm(W[y] - W[j])
                     for j in range(6) if j != y]
        exact = max(0.0, min(d.item() for d in distances))
        assert radii[b].item() <= exact
        if radii[b] > 0:  # moving by the radius towards the nearest boundary keeps the class
            j = min((j for j in range(6) if j != y),
                    key=lambda j: ((logits[b, y] - logits[b, j])
                                   / torch.linalg.vector_norm(W[y] - W[j])).item())
            direction = (W[j] - W[y]) / torch.linalg.vector_norm(W[j] - W[y])
            moved = (x[b] + 0.999 * radii[b] * direction) @ W.T
            assert moved.argmax().item() == y


def test_nan_in_nan_out_and_an_infinite_bound_certifies_nothing():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    with_nan = logits.clone()
    with_nan[0, 1] = math.nan
    result = lipkernels.certify(with_nan, labels, 1.0, 0.1)
    assert math.isnan(result.radii[0]) and result.radii[1] > 0
    assert math.isnan(result.accuracy.item())
    assert torch.isnan(lipkernels.certify(logits, labels, math.nan).accuracy).all()
    assert lipkernels.certify(logits, labels, math.inf, 0.0).accuracy.item() == 0.0


def test_certify_with_a_network_bound():
    torch.manual_seed(0)
    model = lipkernels.nn.LipConvNet(depth=5, init_channels=8).eval()
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
    result = lipkernels.certify(logits, logits.argmax(1), model.lipschitz_bound(), [0.0, 1e-3])
    assert (result.radii > 0).all() and result.accuracy[0] == 1.0


@pytest.mark.parametrize("call, error, message", [
    (lambda z, y: lipkernels.certify(z, y, 0.0), ValueError, "lipschitz must be > 0"),
    (lambda z, y: lipkernels.certify(z, y, "1"), TypeError, "lipschitz must be a float"),
    (lambda z, y: lipkernels.certify(z, y, 1.0, -0.1), ValueError, "eps must be finite and >= 0"),
    (lambda z, y: lipkernels.certify(z, y, 1.0, []), TypeError, "eps must be a float or a non"),
    (lambda z, y: lipkernels.certify(z, y + 3, 1.0), ValueError, r"labels must be class indices"),
    (lambda z, y: lipkernels.certify(z, y.float(), 1.0), TypeError, "labels must be an int64"),
    (lambda z, y: lipkernels.certify(z, y[:1], 1.0), ValueError, r"labels must have shape \(2,\)"),
    (lambda z, y: lipkernels.certify(z[:, :1], y * 0, 1.0), ValueError, "at least 2 classes"),
    (lambda z, y: lipkernels.certify(z[:0], y[:0], 1.0), ValueError, "logits must not be empty"),
    (lambda z, y: lipkernels.certify(z[0], y, 1.0), ValueError, "logits must be 2-D"),
    (lambda z, y: tau_cross_entropy(z, y, 0.0), ValueError, "tau must be a finite float > 0"),
    (lambda z, y: certificate_regularized_loss(z, y, -1.0), ValueError, "gamma must be"),
])
def test_bad_arguments_are_named(call, error, message):
    logits, labels = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5]]), torch.tensor([0, 1])
    with pytest.raises(error, match=message):
        call(logits, labels)


def test_a_zero_hinge_loss_at_the_certified_margin_certifies_eps():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    eps, lipschitz = 0.25, 1.5
    margin = certified_margin(eps, lipschitz)
    assert margin == pytest.approx(math.sqrt(2) * lipschitz * eps, rel=1e-15)
    # Push every true logit to exactly the margin above the largest other one.
    others = logits.scatter(1, labels[:, None], -math.inf).amax(1)
    logits = logits.scatter(1, labels[:, None], (others + margin * (1 + 1e-12))[:, None])
    assert F.multi_margin_loss(logits, labels, margin=margin).item() == 0.0
    assert lipkernels.certify(logits, labels, lipschitz, eps).accuracy.item() == 1.0


def test_tau_cross_entropy_and_certificate_regularisation():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 5, generator=generator, requires_grad=True)
    labels = torch.randint(0, 5, (16,), generator=generator)
    tau = 8.0
    torch.testing.assert_close(tau_cross_entropy(logits, labels, tau),
                               F.cross_entropy(tau * logits, labels) / tau)
    loss = certificate_regularized_loss(logits, labels, 0.5, 2.0)
    radii = lipkernels.certify(logits.detach(), labels, 2.0).radii
    expected = F.cross_entropy(logits, labels) - 0.5 * radii.mean().float()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
