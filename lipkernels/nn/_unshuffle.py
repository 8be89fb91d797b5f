"""The stride-2 downsampling of the orthogonal layers: an invertible pixel unshuffle by 2."""

from __future__ import annotations

import torch

from .._checks import check_even_image


def unshuffle(layer: str, x: torch.Tensor) -> torch.Tensor:
    """F.pixel_unshuffle(x, 2) for (B, C, H, W), H and W even: (B, 4 C, H / 2, W / 2), channel
    c * 4 + 2 i + j holding the pixels (2 h + i, 2 w + j) of channel c. An isometry (a permutation
    of the entries).

    Written as a reshape and permute because torch's pixel_unshuffle returns an empty batch
    unchanged, with the wrong shape (B, C, H, W).
    """
    check_even_image(layer, x)
    batch, channels, height, width = x.shape
    blocks = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return blocks.permute(0, 1, 3, 5, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)
