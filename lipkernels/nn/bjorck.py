"""BjorckLinear: a linear layer whose weight is Björck-orthonormalised at every call.

Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation", ICML 2019 (LNets'
`BjorckLinear`, which BCOP's code, Li et al., NeurIPS 2019, reuses): the weight is divided by a
power-iteration estimate of its largest singular value and `bjorck_iters` first-order Björck
steps (beta = 0.5) take it to its orthogonal polar factor.

Scaling choice. The seed draws a fresh random vector and runs 10 power iterations every call;
here the right vector is a persistent buffer (50 iterations at construction, one per training
call, none in eval), as spectral normalisation keeps it: one matrix-vector pair a step. A
power-iteration sigma is at most sigma_max, and order-1 Björck diverges once sigma_max / scale
reaches sqrt 3, which a large step can cause (a weight that moved far from the stored vector).
So the scale is max(sigma, sqrt(||G||_F / 2)) with G the smaller Gram matrix of W: ||G||_F >=
sigma_max^2, so W / scale has singular values at most sqrt 2 and the iteration always
converges, while sigma keeps the scale tight where a few singular values dominate (there
sqrt(||G||_F / 2) is below sigma_max). Forming G costs a quarter of one Björck iteration. The
layer's bound does not rest on convergence: `lipschitz_bound` certifies the norm of the Q the
layer computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import check_count, check_layer_input
from .._conventions import working_dtype
from ..bounds import near_isometry_norm_bound
from ._distributed import full_parameters
from ._eval_cache import EvalCached
from ._vanilla import in_eval, plain_module
from .soc import INIT_ITERS


def _power_sigma(weight: torch.Tensor, u: torch.Tensor, training: bool,
                 store_vector: bool) -> torch.Tensor:
    """sigma (...) of each matrix of weight (..., m, n) from its persistent unit vector in u
    (..., n; taken in weight's dtype): in training one power iteration (the new vector stored
    where `store_vector`), in eval ||W u|| from the stored vector; differentiable w.r.t.
    weight, u held constant."""
    vector = u.to(weight.dtype)
    if training:
        sigma, new_u, _ = functional.power_iteration(weight, vector, 1)
        if store_vector:
            with torch.no_grad():
                u.copy_(new_u)
        return sigma
    return torch.linalg.vector_norm((weight @ vector.unsqueeze(-1)).squeeze(-1), dim=-1)


def orthonormalised(weight: torch.Tensor, u: torch.Tensor, iters: int, training: bool,
                    store_vector: bool) -> torch.Tensor:
    """bjorck(W / scale, iters) for each matrix W of weight (..., m, n), the scale
    max(sigma, sqrt(||G||_F / 2)) (the module docstring says why; sigma from `_power_sigma`),
    differentiable. A zero matrix (scale 0) gives 0; a NaN stays NaN."""
    work = weight.to(working_dtype(weight.dtype))
    gram = work.mT @ work if work.shape[-2] >= work.shape[-1] else work @ work.mT
    floor = torch.sqrt(torch.linalg.matrix_norm(gram) / 2)
    sigma = _power_sigma(weight, u, training, store_vector)
    scale = torch.maximum(sigma.to(floor.dtype), floor)
    # The scale is 0 only for W = 0, whose Q is 0 at any scale.
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return functional.bjorck(weight, iters, scale=safe)


class BjorckLinear(EvalCached):
    """Orthonormal linear layer: y = Q x + bias, Q = bjorck(W / sigma, bjorck_iters) of the
    weight W (out_features x in_features: orthonormal columns when out >= in, rows otherwise).

    W is divided by max(sigma, sqrt(||G||_F / 2)) (the module docstring says why), sigma the
    power-iteration estimate of ||W||_2 from the persistent unit vector `u` (in_features): in
    training one iteration per call, the new vector stored; in eval sigma = ||W u|| from the
    stored vector, no iteration. Both are differentiable w.r.t. W (u held constant, as in
    spectral normalisation), and the Björck steps are differentiated exactly
    (`lipkernels.bjorck`). A zero W gives Q = 0 (the zero map); a NaN in W gives NaN.

    Initialisation as the seed: W orthogonal with gain 1 / sqrt(in_features), bias
    U(+-1/sqrt(in_features)). Q is reused in eval inside `lipkernels.nn.cached()` (never stale
    outside it). Input (B, in_features), output (B, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bjorck_iters: int = 20, *, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.in_features = check_count(name, "in_features", in_features)
        self.out_features = check_count(name, "out_features", out_features)
        self.bjorck_iters = check_count(name, "bjorck_iters", bjorck_iters, 10 ** 6)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("u", torch.empty(in_features, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        """The seed's weight and bias; a fresh random u after INIT_ITERS power iterations."""
        bound = 1.0 / math.sqrt(self.in_features)
        # Drawn in the working dtype: torch's QR (orthogonal_) takes no half types.
        weight = torch.empty(self.weight.shape, device=self.weight.device,
                             dtype=working_dtype(self.weight.dtype))
        with torch.no_grad():
            self.weight.copy_(nn.init.orthogonal_(weight, gain=bound))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            u = torch.randn(self.in_features, device=self.u.device, dtype=torch.float32)
            self.u.copy_(u / u.norm())
        self.update_vector(INIT_ITERS)

    @torch.no_grad()
    def update_vector(self, iters: int = INIT_ITERS):
        """Run `iters` power iterations on W from u and store the new u."""
        self.u.copy_(functional.power_iteration(self.weight, self.u, iters)[1])

    def _orthogonal_weight(self, store_vector: bool) -> torch.Tensor:
        return orthonormalised(self.weight, self.u, self.bjorck_iters, self.training,
                               store_vector)

    def orthogonal_weight(self) -> torch.Tensor:
        """Q (out_features, in_features) as this mode's forward computes it (in training after
        the call's power iteration, which this stores; reused in eval inside
        `lipkernels.nn.cached()`)."""
        if self.training:
            return self._orthogonal_weight(store_vector=True)
        return self._derived(self.weight, (self.weight, self.u), None,
                             lambda: self._orthogonal_weight(store_vector=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(type(self).__name__, x, 2, "(B, in_features)", "in_features",
                          self.in_features, self.weight)
        return F.linear(x, self.orthogonal_weight(), self.bias)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A provable upper bound (a Python float) on the layer's Lipschitz constant (l2 norms):
        ||Q||_2 for the Q the next forward call computes in the current mode (in training after
        the one power iteration that call takes; the stored vector is left unchanged), certified
        by `lipkernels.bounds.near_isometry_norm_bound` (about 1 + ||Q^T Q - I||_F / 2 once the
        Björck steps have converged); the bias does not change differences. nan for a
        non-finite weight. Like the other layers' bounds it is exact arithmetic on Q's values:
        the rounding of the forward's own product (and autocast) is not included."""
        with full_parameters(self):
            return near_isometry_norm_bound(self._orthogonal_weight(store_vector=False))

    @torch.no_grad()
    def vanilla_export(self) -> nn.Linear:
        """The layer as a plain nn.Linear holding the eval Q: the same eval outputs, loading
        with torch only."""
        weight = in_eval(self, lambda: self._orthogonal_weight(store_vector=False))
        bias = None if self.bias is None else self.bias.detach()
        return plain_module(nn.Linear, weight, bias, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bjorck_iters={self.bjorck_iters}")
