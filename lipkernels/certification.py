"""Certified l2 robustness from logits and a Lipschitz bound, and the losses that train for it.

For a classifier whose logits map f is L-Lipschitz in the l2 norm, the margin of an input x with
label y, m(x) = f_y(x) - max_{j != y} f_j(x), changes by at most sqrt(2) L ||delta|| under a
perturbation delta (each difference f_y - f_j is the map (e_y - e_j)^T f, and ||e_y - e_j|| =
sqrt(2)), so the prediction cannot change while ||delta|| < m / (sqrt(2) L): the certified radius
(Tsuzuku, Sato & Sugiyama, NeurIPS 2018; the SOC, Cayley and CPL papers certify this way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import check_tensor

# The radius is m / (sqrt(2) L) rounded down: three float64 roundings (sqrt(2), the product, the
# quotient), each within 2^-53 relative, are covered by shrinking it by 2^-50.
_ROUNDING_SHRINK = 1.0 - 2.0 ** -50


class Certification(NamedTuple):
    """What `certify` returns.

    radii: (B,) float64, the certified l2 radius of each input, 0 where it is misclassified (or
        tied); nan where its logits or the Lipschitz bound are nan.
    accuracy: (len(eps),) float64, the fraction of inputs whose radius exceeds each eps (at
        eps = 0 the clean accuracy, ties counted wrong); nan where any radius is nan.
    eps: the radii asked for, in the order of `accuracy`.
    """

    radii: torch.Tensor
    accuracy: torch.Tensor
    eps: tuple[float, ...]


def _check_lipschitz(op: str, lipschitz) -> float:
    if isinstance(lipschitz, torch.Tensor) and lipschitz.numel() == 1:
        lipschitz = lipschitz.item()
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)):
        raise TypeError(f"{op}: lipschitz must be a float (a bound such as "
                        f"model.lipschitz_bound()); got {type(lipschitz).__name__}")
    if lipschitz <= 0:
        raise ValueError(f"{op}: lipschitz must be > 0; got {lipschitz}")
    return float(lipschitz)  # nan passes: nan in, nan out


def _check_eps(op: str, eps) -> tuple[float, ...]:
    values = (eps,) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps
    if not isinstance(values, Sequence) or not values or any(
            isinstance(e, bool) or not isinstance(e, (int, float)) for e in values):
        raise TypeError(f"{op}: eps must be a float or a non-empty sequence of floats; got "
                        f"{eps!r}")
    if not all(0 <= e < math.inf for e in values):
        raise ValueError(f"{op}: eps must be finite and >= 0; got {eps!r}")
    return tuple(float(e) for e in values)


def _check_classification(op: str, logits, labels, label_values: bool = True):
    """logits (B, K >= 2) and labels (B,) of class indices on one device; their values only
    where `label_values` (a host sync: certify checks them, the losses leave it to
    F.cross_entropy, which raises on an index out of range itself)."""
    check_tensor(op, "logits", logits, rank=2)
    if logits.shape[1] < 2:
        raise ValueError(f"{op}: logits must have at least 2 classes (columns); got shape "
                         f"{tuple(logits.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: labels must be an int64 or int32 tensor of class indices")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{op}: labels must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}; got {tuple(labels.shape)}")
    if labels.device != logits.device:
        raise ValueError(f"{op}: labels is on {labels.device} but logits is on {logits.device}")
    if label_values and labels.numel() and not bool(
            ((labels >= 0) & (labels < logits.shape[1])).all()):
        raise ValueError(f"{op}: labels must be class indices in [0, {logits.shape[1]})")


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """m = logits[y] - max_{j != y} logits[j] per row, in float64 (exact for float32 logits of
    moderate range), differentiable."""
    logits = logits.double()
    true = logits.gather(1, labels.long()[:, None])[:, 0]
    others = logits.scatter(1, labels.long()[:, None], -math.inf)
    return true - others.amax(1)


def certify(logits: torch.Tensor, labels: torch.Tensor, lipschitz, eps=0.0) -> Certification:
    """Certified radii and certified accuracy of a classifier's outputs.

    Args:
        logits: (B, K) outputs of a network whose l2 Lipschitz constant (input to logits) is at
            most `lipschitz`, K >= 2 classes.
        labels: (B,) class indices.
        lipschitz: a provable bound on that constant, such as `model.lipschitz_bound()` (a
            1-Lipschitz network: 1.0; with an input normalisation x -> (x - mean) / std in front,
            multiply by 1 / min(std) to certify in the original image space).
        eps: the radius, or radii, at which to report certified accuracy (default 0: clean
            accuracy).

    An input is certified at eps when its radius m / (sqrt(2) L) exceeds eps (module
    docstring); the radius is rounded down against its own float64 rounding. The certificate is
    for the logits as computed (the forward pass's rounding is not included).
    """
    op = "certify"
    _check_classification(op, logits, labels)
    if logits.shape[0] == 0:
        raise ValueError(f"{op}: logits must not be empty: certified accuracy of no inputs is "
                         f"undefined")
    lipschitz = _check_lipschitz(op, lipschitz)
    eps = _check_eps(op, eps)
    with torch.no_grad():
        margins = logit_margins(logits, labels)
        # clamp keeps nan: nan logits (or a nan bound) give nan radii.
        radii = torch.clamp(margins, min=0) / (math.sqrt(2) * lipschitz) * _ROUNDING_SHRINK
        thresholds = torch.tensor(eps, dtype=torch.float64, device=radii.device)
        accuracy = (radii[None, :] > thresholds[:, None]).double().mean(1)
        accuracy = torch.where(torch.isnan(radii).any(), math.nan, accuracy)
    return Certification(radii, accuracy, eps)


def certified_margin(eps: float, lipschitz: float = 1.0) -> float:
    """The logit margin sqrt(2) L eps that certifies radius eps: the margin of a hinge loss
    (torch.nn.MultiMarginLoss(margin=...)) trained to certify at eps."""
    (eps,) = _check_eps("certified_margin", eps)
    return math.sqrt(2) * _check_lipschitz("certified_margin", lipschitz) * eps


def tau_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, tau: float,
                      reduction: str = "mean") -> torch.Tensor:
    """Temperature-scaled cross entropy, CE(tau * logits, labels) / tau (deel-lip's
    TauCategoricalCrossentropy): a large tau pushes 1-Lipschitz networks to large margins, a
    small one to accuracy."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise ValueError(f"tau_cross_entropy: tau must be a finite float > 0; got {tau!r}")
    _check_classification("tau_cross_entropy", logits, labels, label_values=False)
    return F.cross_entropy(tau * logits, labels.long(), reduction=reduction) / tau


def certificate_regularized_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float,
                                 lipschitz: float = 1.0) -> torch.Tensor:
    """Cross entropy minus gamma times the mean certified radius (negative radii clipped to 0):
    the certificate regularisation the SOC papers train with (Singla & Feizi, ICML 2021),
    differentiable through the margins."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < math.inf:
        raise ValueError(f"certificate_regularized_loss: gamma must be a finite float >= 0; got "
                         f"{gamma!r}")
    _check_classification("certificate_regularized_loss", logits, labels, label_values=False)
    lipschitz = _check_lipschitz("certificate_regularized_loss", lipschitz)
    radii = F.relu(logit_margins(logits, labels)) / (math.sqrt(2) * lipschitz)
    return F.cross_entropy(logits, labels.long()) - gamma * radii.mean().to(logits.dtype)
