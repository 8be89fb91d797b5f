"""Frequency-domain helpers shared by the reference, the kernel entry points, the layers and the
benchmarks: the circular convolution's per-frequency responses (Sedghi, Gupta & Long, ICLR 2019;
the derivation is in lipkernels.reference.conv_singular_values), the FFT round trip of the Cayley
convolution, the power-iteration estimate of their norm, and the Fantastic Four reshapes."""

from __future__ import annotations

import math

import torch

from ._conventions import fixed_start, input_size_pair, working_dtype


def frequency_response(weight: torch.Tensor, input_size, onesided: bool = False) -> torch.Tensor:
    """H (n1, n2, C_out, C_in) complex: the block of the circular "same" conv with `weight` at
    each frequency (u, v) of an n1 x n2 input, phase included (derived in
    lipkernels.reference.conv_singular_values).
    onesided: only the columns v <= n2 // 2 of rfft2 (n1, n2 // 2 + 1, C_out, C_in)."""
    n1, n2 = input_size_pair(input_size)
    weight = weight.to(working_dtype(weight.dtype))
    k_h, k_w = weight.shape[-2:]
    fft = torch.fft.rfft2 if onesided else torch.fft.fft2
    spectrum = fft(weight, s=(n1, n2)).conj()
    # e^{-2 pi i (u l_h / n1 + v l_w / n2)}: the shift of the filter's centre to index 0.
    u = torch.arange(n1, device=weight.device, dtype=weight.dtype) * (((k_h - 1) // 2) / n1)
    v = (torch.arange(spectrum.shape[-1], device=weight.device, dtype=weight.dtype)
         * (((k_w - 1) // 2) / n2))
    phase = torch.polar(torch.ones_like(u[:, None] + v), -2 * math.pi * (u[:, None] + v))
    return (spectrum * phase).permute(2, 3, 0, 1)


def rfft2_frequencies(size: tuple[int, int]) -> int:
    """F = n1 (n2 // 2 + 1): the frequencies rfft2 keeps of an n1 x n2 image."""
    return size[0] * (size[1] // 2 + 1)


def tap_phases(image_size: tuple[int, int], kernel_size: tuple[int, int], dtype: torch.dtype,
               device) -> torch.Tensor:
    """theta (F, k_h k_w): the response at the rfft2 frequency f = (p, q), q <= n2 // 2, is
    H_f = sum_k W[..., k] e^(i theta_fk) with theta_fk = 2 pi (p (h - c_h) / n1 + q (w - c_w) /
    n2), k = (h, w) and c the filter's centre ((k - 1) // 2), as `frequency_response` forms it.
    The integer products are reduced modulo the image size before dividing, so every angle is
    float64-accurate at any size, then cast to `dtype`."""
    (n1, n2), (k_h, k_w) = image_size, kernel_size
    p = torch.arange(n1, dtype=torch.int64)[:, None, None, None]
    q = torch.arange(n2 // 2 + 1, dtype=torch.int64)[None, :, None, None]
    h = torch.arange(k_h, dtype=torch.int64)[None, None, :, None] - (k_h - 1) // 2
    w = torch.arange(k_w, dtype=torch.int64)[None, None, None, :] - (k_w - 1) // 2
    turns = (p * h % n1).double() / n1 + (q * w % n2).double() / n2
    theta = (2 * math.pi * turns).reshape(n1 * (n2 // 2 + 1), k_h * k_w)
    return theta.to(device=device, dtype=dtype)


def realified_responses(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The real forms [[Re H, -Im H], [Im H, Re H]] (F, 2 C_out, 2 C_in) of the responses at the
    rfft2 frequencies (one of each conjugate pair: their singular values are the same), whose
    singular values are those of H, each twice: u <- H^H H u written on (Re u, Im u)."""
    responses = frequency_response(weight, size, onesided=True).flatten(0, 1)
    real, imag = responses.real, responses.imag
    return torch.cat([torch.cat([real, -imag], -1), torch.cat([imag, real], -1)], -2)


def frequency_starts(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The start (F, 2 C_in) of a power iteration at every rfft2 frequency: `fixed_start`, the
    same (Re u, Im u) at each, in `weight`'s working dtype."""
    start = fixed_start(2 * weight.shape[1], weight.device, working_dtype(weight.dtype))
    # The kernels read u as a dense tensor: the broadcast start materialised.
    return start.expand(rfft2_frequencies(size), -1).contiguous()


def power_iteration_norm(weight: torch.Tensor, size: tuple[int, int], iters: int,
                         frequency_power_iteration) -> torch.Tensor:
    """max over the rfft2 frequencies of the power-iteration estimate of sigma_max(H_f), H the
    responses of the circular conv on a `size` image, in `weight`'s dtype.

    `frequency_power_iteration` (the reference, or a backend's entry: same signature and
    outputs) runs `iters` steps at every frequency at once from `frequency_starts`.
    """
    sigma, _, _ = frequency_power_iteration(weight.to(working_dtype(weight.dtype)),
                                            frequency_starts(weight, size), iters, *size)
    return sigma.max().to(weight.dtype)


def frequency_responses(weight: torch.Tensor, image_size: tuple[int, int],
                        dtype: torch.dtype) -> torch.Tensor:
    """R (F, C_out, C_in) complex: the responses at the rfft2 frequencies of an H x W image, with
    weight computed in the real `dtype`."""
    response = frequency_response(weight.to(dtype), image_size, onesided=True)
    return response.reshape(-1, *weight.shape[:2])


def to_spectrum(x: torch.Tensor) -> torch.Tensor:
    """rfft2 of x (B, C, H, W) as (F, C, B), in the working precision."""
    spectrum = torch.fft.rfft2(x.to(working_dtype(x.dtype)))
    return spectrum.permute(2, 3, 1, 0).reshape(-1, x.shape[1], x.shape[0])


def from_spectrum(spectrum: torch.Tensor, image_size: tuple[int, int],
                  dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `to_spectrum`: (F, C, B) back to real images (B, C, H, W) of `dtype`."""
    height, width = image_size
    channels, batch = spectrum.shape[1:]
    half = spectrum.reshape(height, width // 2 + 1, channels, batch).permute(3, 2, 0, 1)
    return torch.fft.irfft2(half, s=(height, width)).to(dtype)


def spectral_conv2d(x: torch.Tensor, weight: torch.Tensor, apply) -> torch.Tensor:
    """irfft2(apply(R, rfft2(x))): x (B, C_in, H, W) through `apply(response, spectrum)`, the
    per-frequency map, back to (B, C_out, H, W) in x's dtype."""
    image_size = tuple(x.shape[-2:])
    response = frequency_responses(weight, image_size, working_dtype(x.dtype))
    return from_spectrum(apply(response, to_spectrum(x)), image_size, x.dtype)


def frequency_conv2d(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """irfft2(matrices_f rfft2(x)_f): x (B, C_in, H, W) through given per-frequency matrices
    (F, C_out, C_in) (e.g. the cached Cayley transforms of an eval-mode layer)."""
    image_size = tuple(x.shape[-2:])
    return from_spectrum(matrices @ to_spectrum(x), image_size, x.dtype)


def bound_matrices(weight: torch.Tensor) -> list[torch.Tensor]:
    """The four reshapes M_1..M_4 of a (C_out, C_in, k_h, k_w) filter."""
    c_out, c_in, k_h, k_w = weight.shape
    return [
        weight.transpose(1, 2).reshape(c_out * k_h, c_in * k_w),
        weight.transpose(1, 3).reshape(c_out * k_w, c_in * k_h),
        weight.reshape(c_out, c_in * k_h * k_w),
        weight.transpose(0, 1).reshape(c_in, c_out * k_h * k_w),
    ]
