"""lipkernels.nn.swap: an existing CNN's convolutions and linear layers become orthogonal
lipkernels layers of the same shapes; what cannot be swapped is kept and reported with the
reason."""

import pytest
import torch
from torch import nn

import lipkernels
from lipkernels.nn import (AOLConv2d, AOLLinear, BCOPConv2d, BjorckLinear, CayleyConv2d,
                           CayleyLinear, HouseHolder, SOCConv2d, SOCLinear, swap)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, (3, 3), stride=2, padding=(1, 1), bias=False),
                         nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3),
                         nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(16, 10))


@pytest.mark.parametrize("family,conv,linear", [("soc", SOCConv2d, SOCLinear),
                                                ("cayley", CayleyConv2d, CayleyLinear),
                                                ("bcop", BCOPConv2d, BjorckLinear)])
def test_swap_replaces_what_keeps_its_shape_and_reports_the_rest(family, conv, linear):
    model = small_cnn()
    swapped, report = swap(model, family)
    assert isinstance(model[0], nn.Conv2d) and swapped is not model  # a copy by default
    assert isinstance(swapped[0], conv) and isinstance(swapped[2], conv)
    assert isinstance(swapped[8], linear)
    assert (swapped[2].stride, swapped[2].bias, swapped[0].bias is not None) == (2, None, True)
    assert isinstance(swapped[5], nn.Conv2d)  # padding 0 shrinks the image: kept
    assert [name for name, *_ in report.replaced] == ["0", "2", "8"]
    notes = {name: note for name, _, _, note in report.replaced}
    assert notes["0"] == ("" if family == "soc" else "zeros padding becomes circular")
    kept = {name: (kind, why) for name, kind, why in report.kept}
    assert set(kept) == {"3", "4", "5", "6"}
    assert kept["3"][0] == "BatchNorm2d" and "not 1-Lipschitz" in kept["3"][1]
    assert kept["5"] == ("Conv2d", f"{conv.__name__}: padding must be 'same' (or 1, the same "
                                   "padding of a 3x3 filter): the layer is orthogonal as a "
                                   "size-preserving convolution only; got 0")
    assert kept["4"] == ("MaxPool2d", "1-Lipschitz: its windows do not overlap")
    assert "windows overlap, so its Lipschitz constant can exceed 1" in kept["6"][1]
    x = torch.randn(2, 3, 16, 16)
    assert swapped(x).shape == model(x).shape
    assert "replaced 3 module(s), kept 4:" in str(report)


def test_swap_in_place_and_of_a_single_layer():
    model = nn.Sequential(nn.Linear(4, 4))
    same, report = swap(model, inplace=True)
    assert same is model and isinstance(model[0], SOCLinear) and len(report.replaced) == 1
    layer, report = swap(nn.Conv2d(2, 4, 3, padding="same"))
    assert isinstance(layer, SOCConv2d) and [r[0] for r in report.replaced] == [""]


def test_swap_leaves_lipkernels_layers_alone():
    model = nn.Sequential(SOCConv2d(4, 4), HouseHolder(4), nn.Conv2d(4, 4, 3, padding=1))
    swapped, report = swap(model, "soc")
    assert [r[0] for r in report.replaced] == ["2"] and report.kept == []
    assert isinstance(swapped[2], SOCConv2d)


def test_soc_keeps_circular_convolutions():
    _, report = swap(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")))
    (kept,) = report.kept
    assert "padding_mode must be 'zeros'" in kept[2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="swap: family must be one of soc, cayley, bcop, aol; got "
                                         "'cpl'"):
        swap(nn.Linear(2, 2), "cpl")
    with pytest.raises(TypeError, match="swap: model must be a torch.nn.Module; got int"):
        swap(3)


def test_bcop_keeps_convolutions_of_odd_channel_counts():
    _, report = swap(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)), "bcop")
    (kept,) = report.kept
    assert "must be even for a filter of 3 taps" in kept[2]


def test_aol_swaps_every_convolution_and_linear_layer():
    """AOL's rescaling bounds any zero-padded convolution, so the padding-0 one is replaced too;
    the model keeps its shapes and its bound is the product of the layers' (below 1 each)."""
    model = small_cnn()
    swapped, report = swap(model, "aol")
    assert [name for name, *_ in report.replaced] == ["0", "2", "5", "8"]
    assert all(note == "" for *_, note in report.replaced)
    assert isinstance(swapped[5], AOLConv2d) and swapped[5].padding == 0
    assert isinstance(swapped[8], AOLLinear) and swapped[2].stride == 2
    x = torch.randn(2, 3, 16, 16)
    assert swapped(x).shape == model(x).shape
    del swapped[3]  # the batch normalisation, which no bound covers
    assert lipkernels.lipschitz_bound(swapped) <= 1.0
