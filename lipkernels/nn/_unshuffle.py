"""The stride-2 downsampling of the orthogonal layers: an invertible pixel unshuffle by 2, and
the input of the conv layers that use it."""

from __future__ import annotations

import torch

from .._checks import check_even_image, check_layer_input


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


def filter_input(layer: str, x: torch.Tensor, in_channels: int, weight: torch.Tensor,
                 stride: int, filter_size: int) -> torch.Tensor:
    """A strided conv layer's input (B, in_channels, H, W), checked, unshuffled at stride 2,
    for a filter of filter_size taps that must fit the image it sees."""
    check_layer_input(layer, x, 4, "(B, C, H, W)", "in_channels", in_channels, weight)
    if stride == 2:
        x = unshuffle(layer, x)
    if filter_size > min(x.shape[-2:]):
        raise ValueError(f"{layer}: the {filter_size}x{filter_size} filter must fit in the "
                         f"{tuple(x.shape[-2:])} image it sees (after the stride-2 unshuffle, "
                         f"if any)")
    return x
