"""SOCConv2d and CayleyConv2d take nn.Conv2d's arguments: the tuple forms and the values that mean
what the layers compute build the same layer; every other value is refused with the reason."""

import pytest
import torch
from torch import nn

from lipkernels.nn import CayleyConv2d, SOCConv2d

# Each layer with the padding mode its math has.
LAYERS = [(SOCConv2d, "zeros"), (CayleyConv2d, "circular")]


def _built(layer, seed, *args, **kwargs):
    torch.manual_seed(seed)
    return layer(*args, **kwargs).double()


@pytest.mark.parametrize("layer,mode", LAYERS)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_arguments_build_the_same_layer(layer, mode, stride):
    """The arguments of an nn.Conv2d that preserves the image size (tuples, padding k // 2 or
    'same', dilation 1, groups 1, the layer's padding mode) give the layer built from plain
    ints: the same parameters, buffers and outputs."""
    conv = nn.Conv2d(3, 4, 3, stride, padding=1, bias=False, padding_mode=mode)
    for padding in (conv.padding, 1, "same"):
        # A fresh pair each time: a training forward updates the power-iteration vectors.
        plain = _built(layer, 0, 3, 4, 3, stride, bias=False)
        swapped = _built(layer, 0, conv.in_channels, conv.out_channels, conv.kernel_size,
                         conv.stride, conv.bias is not None, padding=padding,
                         dilation=conv.dilation, groups=conv.groups,
                         padding_mode=conv.padding_mode)
        assert (swapped.kernel_size, swapped.stride) == (3, stride)
        for (name, a), (_, b) in zip(plain.state_dict().items(), swapped.state_dict().items()):
            assert torch.equal(a, b), name
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
        assert torch.equal(plain(x), swapped(x))
        assert swapped(x).shape == conv.double()(x).shape


@pytest.mark.parametrize("layer,mode", LAYERS)
@pytest.mark.parametrize("kwargs,error,message", [
    ({"padding": 0}, ValueError, r"padding must be 'same' \(or 1, the same padding of a 3x3 "
                                 r"filter\): the layer is orthogonal as a size-preserving "
                                 r"convolution only; got 0"),
    ({"padding": "valid"}, ValueError, "padding must be 'same'.*got 'valid'"),
    ({"padding": (1, 2)}, ValueError, r"padding must be 'same'.*got \(1, 2\)"),
    ({"padding": True}, ValueError, "padding must be 'same'.*got True"),
    ({"kernel_size": (3, 5)}, ValueError,
     r"kernel_size must be an int or a pair of equal ints \(the layer is square"),
    ({"stride": (1, 2)}, ValueError, "stride must be an int or a pair of equal ints"),
    ({"stride": (3, 3)}, ValueError, "stride must be 1 or 2"),
    ({"dilation": 2}, ValueError, r"dilation must be 1 \(dilated filters are not implemented\)"),
    ({"dilation": (2, 2)}, ValueError, "dilation must be 1"),
    ({"groups": 2}, ValueError, r"groups must be 1 \(the orthogonal map mixes every channel\)"),
    ({"groups": 0}, ValueError, "groups must be >= 1"),
    ({"bias": 1}, TypeError, "bias must be True or False .*keyword arguments here, unlike "
                             "nn.Conv2d's positional order.*got 1"),
])
def test_arguments_the_layers_cannot_honour_are_refused(layer, mode, kwargs, error, message):
    arguments = {"in_channels": 3, "out_channels": 4, **kwargs}
    with pytest.raises(error, match=f"{layer.__name__}: {message}"):
        layer(**arguments)


def test_each_layer_refuses_the_other_padding_mode_with_the_reason():
    with pytest.raises(ValueError, match="SOCConv2d: padding_mode must be 'zeros' .the kernels "
                                         "compute the series of the zero-padded convolution.; "
                                         "got 'circular'"):
        SOCConv2d(3, 4, padding_mode="circular")
    with pytest.raises(ValueError, match="CayleyConv2d: padding_mode must be 'circular' .the "
                                         "Cayley transform is taken at each frequency of a "
                                         "circular convolution.; got 'zeros'"):
        CayleyConv2d(3, 4, padding_mode="zeros")


def test_even_cayley_filters_take_same_padding_only():
    """An even k has no symmetric int padding that keeps the size: only 'same' is taken."""
    assert CayleyConv2d(3, 4, (2, 2), padding="same").kernel_size == 2
    with pytest.raises(ValueError, match=r"CayleyConv2d: padding must be 'same': the layer"):
        CayleyConv2d(3, 4, 2, padding=1)
