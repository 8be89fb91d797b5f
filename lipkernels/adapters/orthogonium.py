"""orthogonium on lipkernels: its power-iteration normaliser, Björck orthogonaliser and legacy
SOC layer with their iterations on lipkernels ops.

- `PowerIteration` is orthogonium's `BatchedPowerIteration` (the spectral normaliser of its
  `OrthoParams`: v = normalize(X^T u), u = normalize(X v), n_iters times, then X / (u^T X v +
  eps)) as one `lipkernels.power_iteration` call on X^T, whose right vector is orthogonium's u.
  orthogonium normalises by |x| + 1e-8 and lipkernels by max(|x|, 1e-12): the iterates agree to
  float32 rounding wherever |x| is far above 1e-8.
- `BjorckOrthogonalization` is its `BatchedBjorckOrthogonalization` (W <- (1 + beta) W -
  beta W W^T W, niters times) as `lipkernels.bjorck` at order 1 on the unscaled W; with
  pass_through, the niters iterations without gradient and one more with it, as orthogonium.
- `SkewOrthogonalConv` is the legacy `SOC` layer (orthogonium.legacy.skew_ortho_conv): its
  Fantastic Four vectors updated by `lipkernels.power_iteration` on the four reshapes, its series
  by `lipkernels.soc_exp`.

`adapt(model)` switches these modules of a model in place; `ortho_params(base)` gives the
`OrthoParams` whose normaliser and orthogonaliser are the adapted classes, for new layers;
`to_soc_conv2d(soc)` turns a legacy SOC layer into lipkernels' own SOCConv2d (what
`lipkernels.nn.swap` does with one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional
from .._spectral import bound_matrices
from . import AdaptReport, adapt_classes, require

_reparametrizers = require("orthogonium.reparametrizers", "orthogonium")
_classparam = require("orthogonium.model_factory.classparam", "orthogonium")
_legacy_soc = require("orthogonium.legacy.skew_ortho_conv", "orthogonium einops")

__all__ = ["PowerIteration", "BjorckOrthogonalization", "SkewOrthogonalConv", "adapt",
           "ortho_params", "to_soc_conv2d"]


class PowerIteration(_reparametrizers.BatchedPowerIteration):
    """orthogonium's BatchedPowerIteration with its iterations in one lipkernels call (the same
    parametrised vectors u and v)."""

    def forward(self, X, init_u=None, n_iters=3, return_uv=True):
        if n_iters == 0:
            return super().forward(X, init_u, n_iters, return_uv)
        sigma, u, v = functional.power_iteration(X.mT, self.u.squeeze(-1).detach(), n_iters)
        with torch.no_grad():
            self.u, self.v = u.unsqueeze(-1), v.unsqueeze(-1)
        return X / (sigma[..., None, None] + self.eps)


class BjorckOrthogonalization(_reparametrizers.BatchedBjorckOrthogonalization):
    """orthogonium's BatchedBjorckOrthogonalization as lipkernels.bjorck (order 1, unscaled)."""

    def forward(self, w):
        if not self.pass_through:
            return functional.bjorck(w, self.niters, self.beta, 1, scale=1.0)
        with torch.no_grad():
            w = functional.bjorck(w, self.niters, self.beta, 1, scale=1.0)
        return (1 + self.beta) * w - self.beta * self.wwtw_op(w)


# The legacy SOC's Fantastic Four vectors (u_q right, v_q left of lipkernels' M_1..M_4, in
# `bound_matrices`' order), as its parameter names.
_FANTASTIC_FOUR_VECTORS = (("u1", "v1"), ("u2", "v2"), ("u3", "v3"), ("u4", "v4"))


def _right_vector(q: int, u: torch.Tensor) -> torch.Tensor:
    """orthogonium's u_q as the right vector of M_q. Only u2 = (1, C_in, k_h, 1) is ordered
    otherwise: M_2's columns run over (k_h, C_in)."""
    return u[0, :, :, 0].mT.reshape(-1) if q == 1 else u.reshape(-1)


def _peer_right_vector(q: int, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if q == 1:
        return u.reshape(like.shape[2], like.shape[1]).mT.reshape(like.shape)
    return u.reshape(like.shape)


class SkewOrthogonalConv(_legacy_soc.SOC):
    """orthogonium's legacy SOC layer with its power iterations and its series on lipkernels
    (the same parameters, schedule and outputs)."""

    def _update_iters(self) -> int:
        """The peer's schedule: init_iters every update_freq training steps, update_iters on the
        others, none in eval."""
        if not self.training:
            return 0
        iters = self.init_iters if self.total_iters % self.update_freq == 0 else self.update_iters
        self.total_iters += 1
        return iters

    def update_sigma(self):
        S = functional.skew(self.unconstrained_conv_filter)
        iters = self._update_iters()
        pairs = [(getattr(self, u), getattr(self, v)) for u, v in _FANTASTIC_FOUR_VECTORS]
        if iters:
            with torch.no_grad():
                for q, (matrix, (u, v)) in enumerate(zip(bound_matrices(S.detach()), pairs)):
                    _, new_u, new_v = functional.power_iteration(matrix, _right_vector(q, u),
                                                                 iters)
                    u.copy_(_peer_right_vector(q, new_u, u))
                    v.copy_(new_v.reshape(v.shape))
        sigma1, sigma2, sigma3, sigma4 = (torch.sum(S * u * v) for u, v in pairs)
        return torch.min(torch.min(torch.min(sigma1, sigma2), sigma3), sigma4)

    def forward(self, x):
        S = self.correction * functional.skew(self.unconstrained_conv_filter) / self.update_sigma()
        terms = (self.train_terms if self.training else self.eval_terms) + 1
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        if self.out_channels > self.in_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))
        z = functional.soc_exp(x, S, terms)[:, :self.out_channels]
        return z + self.bias.view(1, -1, 1, 1) if self.enable_bias else z


@torch.no_grad()
def to_soc_conv2d(soc) -> torch.nn.Module:
    """A lipkernels SOCConv2d computing what orthogonium's legacy `SOC` layer `soc` computes:
    the same filter (skew(W) scaled by correction / sigma, sigma the least Fantastic Four
    estimate), the same series lengths (orthogonium counts the terms after the identity) and
    its right vectors. A training step then takes the same single iteration (lipkernels runs
    no 50-iteration refresh every update_freq steps: call `update_vectors()` for one); in eval
    sigma is ||M_q u_q|| from the right vectors alone where orthogonium keeps v_q too, equal
    once the iteration has converged."""
    from ..nn import SOCConv2d

    layer = SOCConv2d(soc.in_channels // soc.stride ** 2, soc.out_channels, soc.kernel_size,
                      soc.stride, soc.enable_bias, train_terms=soc.train_terms + 1,
                      eval_terms=soc.eval_terms + 1, correction=float(soc.correction),
                      device=soc.unconstrained_conv_filter.device,
                      dtype=soc.unconstrained_conv_filter.dtype)
    layer.weight.copy_(soc.unconstrained_conv_filter)
    if soc.enable_bias:
        layer.bias.copy_(soc.bias)
    for q, (u, _) in enumerate(_FANTASTIC_FOUR_VECTORS):
        getattr(layer, f"u{q + 1}").copy_(_right_vector(q, getattr(soc, u)))
    return layer.train(soc.training)


_ADAPTERS = {_reparametrizers.BatchedPowerIteration: PowerIteration,
             _reparametrizers.BatchedBjorckOrthogonalization: BjorckOrthogonalization,
             _legacy_soc.SOC: SkewOrthogonalConv}
_NO_OP = "no lipkernels op computes this orthogonalisation"
_KEPT = {_reparametrizers.BatchedCholeskyOrthogonalization: _NO_OP,
         _reparametrizers.BatchedExponentialOrthogonalization: _NO_OP,
         _reparametrizers.BatchedQROrthogonalization: _NO_OP}


def adapt(model: torch.nn.Module) -> AdaptReport:
    """orthogonium's power-iteration normalisers, Björck orthogonalisers and legacy SOC layers in
    `model` switched to their lipkernels classes, in place."""
    return adapt_classes(model, _ADAPTERS, _KEPT)


def ortho_params(base=None):
    """`base` (orthogonium's DEFAULT_ORTHO_PARAMS when None) with its normaliser and
    orthogonaliser on lipkernels where an adapter exists, the same arguments kept: pass it as
    `ortho_params=` to orthogonium's layers."""
    base = base or _reparametrizers.DEFAULT_ORTHO_PARAMS

    def adapted(param):
        adapter = _ADAPTERS.get(param.fct)
        return param if adapter is None else _classparam.ClassParam(adapter, *param.args,
                                                                    **param.kwargs)

    return _reparametrizers.OrthoParams(spectral_normalizer=adapted(base.spectral_normalizer),
                                        orthogonalizer=adapted(base.orthogonalizer))
