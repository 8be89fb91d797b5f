"""Input validation shared by every public op.

Shape, dtype and device checks are cheap metadata reads and always run. Checks that need tensor
values (non-finite entries) would force a device-to-host sync, so they run only when the
environment variable ``LIPKERNELS_CHECK=1`` was set at import; without it NaN or inf inputs give
NaN outputs, never a finite wrong number (docs/design.md §4).
"""

from __future__ import annotations

import contextlib
import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

VALUE_CHECKS = os.environ.get("LIPKERNELS_CHECK", "0") == "1"


def require_tensor(op: str, name: str, value):
    """`value` is a torch.Tensor (the first of check_tensor's checks, for arguments whose dtype
    and shape are checked against another tensor's)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def check_tensor(op: str, name: str, tensor, *, rank: int | None = None, min_rank: int | None = None,
                 dtypes: tuple = SUPPORTED_DTYPES, batch_dims: int = 0):
    """`tensor` is a tensor of one of `dtypes` (default: the floating types every op supports; an
    op that also takes complex tensors passes its own) and of the given rank, empty only in its
    first `batch_dims` dims (a negative count: all but the last -batch_dims). An empty batch gives
    an empty result, as torch's layers do; a zero channel, image or matrix size is an error."""
    require_tensor(op, name, tensor)
    if tensor.dtype not in dtypes:
        supported = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype {supported}; got {tensor.dtype}")
    if rank is not None and tensor.dim() != rank:
        raise ValueError(f"{op}: {name} must be {rank}-D; got shape {tuple(tensor.shape)}")
    if min_rank is not None and tensor.dim() < min_rank:
        raise ValueError(f"{op}: {name} must have at least {min_rank} dims; "
                         f"got shape {tuple(tensor.shape)}")
    batch = batch_dims if batch_dims >= 0 else max(tensor.dim() + batch_dims, 0)
    if 0 in tensor.shape[batch:]:
        where = "" if batch == 0 else f" outside its first {batch} (batch) dims"
        raise ValueError(f"{op}: {name} must not be empty{where}; got shape {tuple(tensor.shape)}")
    if VALUE_CHECKS and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{op}: {name} has NaN or inf entries (LIPKERNELS_CHECK=1)")


def check_channel_pairs(op: str, name: str, x):
    """x is a (B, C, *spatial) tensor with C even: the input of the channel-pair activations (or
    its gradient, named `name`)."""
    check_tensor(op, name, x, min_rank=2, batch_dims=1)
    if x.shape[1] % 2:
        raise ValueError(f"{op}: {name} must have an even number of channels (dim 1) to form "
                         f"channel pairs; got shape {tuple(x.shape)}")


def check_like(op: str, name: str, tensor: torch.Tensor, reference_name: str,
               reference: torch.Tensor, shape: tuple[int, ...]):
    """`tensor` has the given shape and the dtype and device of `reference`."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)} to match {reference_name} "
                         f"{tuple(reference.shape)}; got {tuple(tensor.shape)}")
    if tensor.device != reference.device:
        raise ValueError(f"{op}: {name} is on {tensor.device} but {reference_name} is on "
                         f"{reference.device}; both must be on the same device")
    if tensor.dtype != reference.dtype:
        raise TypeError(f"{op}: {name} has dtype {tensor.dtype} but {reference_name} has "
                        f"{reference.dtype}; they must match")


# Upper bounds of the iteration and term counts. A power iteration converges linearly, so a
# million iterations reach float64 accuracy at any relative spectral gap above 2e-5; after 128
# terms the truncation bound e^a a^n / n! of the series of exp(A) is below 1e-40 for every
# a = ||A|| <= 20, far beyond the normalised operators (||A|| about 1) the layers build. Larger
# counts are mistakes, and without a bound they fail deep inside (an int64 overflow in the op
# schema, an allocation of the kept terms).
MAX_ITERS = 1_000_000
MAX_TERMS = 128


def check_iters(op: str, iters) -> int:
    """`iters` is a Python int from 1 to MAX_ITERS."""
    return check_count(op, "iters", iters, maximum=MAX_ITERS)


def check_terms(op: str, name: str, terms) -> int:
    """`terms` (series terms counting the identity) is a Python int from 1 to MAX_TERMS."""
    return check_count(op, name, terms, maximum=MAX_TERMS)


def check_count(op: str, name: str, value, maximum: int | None = None) -> int:
    """`value` (a size, an iteration or term count) is a Python int >= 1 (and <= `maximum`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{op}: {name} must be <= {maximum}; got {value}")
    return value


def check_int_pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    """`value` (a convolution's stride, padding or kernel size) is an int or a pair of ints, each
    >= `minimum`: returned as a pair."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(isinstance(n, bool) or not isinstance(n, int) for n in pair)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints; got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}; got {tuple(pair)}")
    return tuple(pair)


def check_nonnegative(op: str, name: str, value) -> float:
    """`value` (a tolerance, a sufficient bound) is a real number >= 0, inf allowed: a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float; got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{op}: {name} must be >= 0; got {value}")
    return float(value)


def check_weight_shape(op: str, weight_shape):
    """`weight_shape` (a backward's record of its filter) is [C_out, C_in, k_h, k_w], each >= 1."""
    if len(weight_shape) != 4 or min(weight_shape) < 1:
        raise ValueError(f"{op}: weight_shape must be [C_out, C_in, k_h, k_w] with every size "
                         f">= 1; got {list(weight_shape)}")


def check_square_filter(op: str, name: str, weight: torch.Tensor):
    """`weight` is a (C, C, k, k) filter with k odd: square in channels and in space, so that it
    and its flip-transpose act on the same C channels with the same "same" padding k // 2."""
    check_tensor(op, name, weight, rank=4)
    c_out, c_in, k_h, k_w = weight.shape
    if c_out != c_in:
        raise ValueError(f"{op}: {name} must be square in channels (C, C, k, k); "
                         f"got shape {tuple(weight.shape)}")
    if k_h != k_w or k_h % 2 == 0:
        raise ValueError(f"{op}: {name} must have a square kernel of odd size k; "
                         f"got shape {tuple(weight.shape)}")


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for any device type; False where autocast does not exist (meta,
    used for deferred initialisation), where torch's own query raises."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str):
    """A context without autocast, for what a layer derives from its parameters (a spectral
    normalisation, an orthogonalised filter): it stays in the parameters' precision (float32)
    even when the layer's convolution runs in bfloat16 or float16. Devices without autocast
    (meta, for deferred initialisation) have nothing to disable."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def check_layer_input(layer: str, x, rank: int, layout: str, size_name: str, size: int,
                      weight: torch.Tensor):
    """A layer's input: a `rank`-D tensor (`layout`, e.g. "(B, C, H, W)") with `size` entries at
    dim 1 (the layer's `size_name`, e.g. in_channels), in the weight's dtype unless autocast is
    on (then the layer casts)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: input must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{layer}: input must be {rank}-D {layout}; got shape {tuple(x.shape)}")
    if x.shape[1] != size:
        raise ValueError(f"{layer}: input has size {x.shape[1]} at dim 1 but {size_name}={size}; "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype and not autocast_enabled(x.device.type):
        raise TypeError(f"{layer}: input dtype {x.dtype} differs from the layer's {weight.dtype}; "
                        f"cast one of them or run under torch.autocast")


def check_stride(layer: str, stride):
    """stride is 1 or 2 (stride 2 is an invertible pixel_unshuffle by 2)."""
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"{layer}: stride must be 1 or 2 (stride 2 is pixel_unshuffle); "
                         f"got {stride!r}")


def check_square_size(layer: str, name: str, value) -> int:
    """An int, or a pair of equal ints (nn.Conv2d's tuple form), as one int."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{layer}: {name} must be an int or a pair of equal ints (the layer "
                             f"is square: its filter is C x C x k x k); got {tuple(value)!r}")
        value = value[0]
    return check_count(layer, name, value)


def check_conv_arguments(layer: str, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, padding_mode_only: tuple[str, str]) -> tuple[int, int]:
    """(kernel_size, stride) as ints from nn.Conv2d's arguments, so that a layer takes them as
    a drop-in: kernel_size and stride an int or a pair of equal ints (stride 1 or 2);
    padding "same", or the int (or pair) k // 2 that means the same for an odd k; dilation 1,
    groups 1; bias True or False (also catching nn.Conv2d's positional padding, which these
    layers take by keyword); padding_mode the layer's one mode (padding_mode_only: the mode,
    why the layer has no other). Anything else is an error naming the argument and why."""
    kernel_size = check_square_size(layer, "kernel_size", kernel_size)
    stride = check_square_size(layer, "stride", stride)
    check_stride(layer, stride)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and padding[0] == padding[1]:
        padding = padding[0]
    same = padding == "same" or (kernel_size % 2 == 1 and not isinstance(padding, bool)
                                 and isinstance(padding, int) and padding == kernel_size // 2)
    if not same:
        ints = f" (or {kernel_size // 2}, the same padding of a {kernel_size}x{kernel_size} filter)" \
            if kernel_size % 2 else ""
        raise ValueError(f"{layer}: padding must be 'same'{ints}: the layer is orthogonal as a "
                         f"size-preserving convolution only; got {padding!r}")
    if check_square_size(layer, "dilation", dilation) != 1:
        raise ValueError(f"{layer}: dilation must be 1 (dilated filters are not implemented); "
                         f"got {dilation!r}")
    if check_count(layer, "groups", groups) != 1:
        raise ValueError(f"{layer}: groups must be 1 (the orthogonal map mixes every channel); "
                         f"got {groups!r}")
    if not isinstance(bias, bool):
        raise TypeError(f"{layer}: bias must be True or False (padding, dilation, groups and "
                        f"padding_mode are keyword arguments here, unlike nn.Conv2d's positional "
                        f"order); got {bias!r}")
    mode, why = padding_mode_only
    if padding_mode != mode:
        raise ValueError(f"{layer}: padding_mode must be {mode!r} ({why}); got {padding_mode!r}")
    return kernel_size, stride


def check_even_image(layer: str, x: torch.Tensor):
    """H and W even, as pixel_unshuffle(x, 2) needs."""
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"{layer}: with stride=2 the input height and width must be even "
                         f"(pixel_unshuffle by 2); got shape {tuple(x.shape)}")
