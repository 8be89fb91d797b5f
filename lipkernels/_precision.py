"""The precision the spectral computations run in, shared by the reference, the kernels' FFT
wrappers, the layers and the bounds."""

from __future__ import annotations

import torch


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype for the FFTs, SVDs and Cholesky factorisations of data of `dtype`: float64
    for float64, float32 otherwise (torch.fft and torch.linalg have no half-precision kernels,
    so float16 and bfloat16 are computed in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
