"""lipkernels.adapters: the peers' layers on lipkernels ops give the peers' own outputs,
gradients and vectors, and their state_dicts load both ways."""

import contextlib
import copy
import subprocess
import sys
from unittest import mock

import pytest
import torch
from torch.nn.utils import parametrize

pytest.importorskip("orthogonium")
pytest.importorskip("deel.torchlip")
pytest.importorskip("einops")

from deel.torchlip import SpectralConv2d, SpectralLinear  # noqa: E402
from orthogonium import reparametrizers  # noqa: E402
from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d  # noqa: E402
from orthogonium.layers.linear.ortho_linear import OrthoLinear  # noqa: E402
from orthogonium.legacy import skew_ortho_conv  # noqa: E402

import lipkernels.nn  # noqa: E402
from lipkernels.adapters import orthogonium, torchlip  # noqa: E402


def _close(actual, expected, what):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * max(scale, 1.0),
                               msg=lambda m: f"{what}: {m}")


def _assert_trains_alike(adapter, peer, x, report_names):
    """`peer` and its deep copy adapted by `adapter` (its report naming `report_names`) through
    two training steps and an eval forward: the same outputs, gradients and state, and
    state_dicts that load into each other."""
    adapted = copy.deepcopy(peer)
    report = adapter.adapt(adapted)
    assert [(name, old) for name, old, _ in report.adapted] == report_names, str(report)
    for training in (True, True, False):
        peer.train(training)
        adapted.train(training)
        outputs = [model(x) for model in (peer, adapted)]
        _close(outputs[1], outputs[0], f"output (training={training})")
        if training:
            for model, y in zip((peer, adapted), outputs):
                model.zero_grad()
                (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            for (name, p), q in zip(peer.named_parameters(), adapted.parameters()):
                if p.grad is not None:
                    _close(q.grad, p.grad, f"gradient of {name}")
    state = peer.state_dict()
    for name, value in adapted.state_dict().items():
        _close(value, state[name], f"state {name}")
    adapted.load_state_dict(state)
    peer.load_state_dict(adapted.state_dict())


_POWER_AND_BJORCK = [("parametrizations.weight.0", "BatchedPowerIteration"),
                     ("parametrizations.weight.1", "BatchedBjorckOrthogonalization")]


@pytest.mark.parametrize("make,x_shape", [
    (lambda params: OrthoLinear(20, 30, ortho_params=params), (5, 20)),
    (lambda params: OrthoLinear(30, 12, ortho_params=params), (5, 30)),
    (lambda params: AdaptiveOrthoConv2d(8, 8, 3, ortho_params=params), (2, 8, 8, 8)),
    (lambda params: AdaptiveOrthoConv2d(4, 8, 3, ortho_params=params), (2, 4, 6, 6))])
@pytest.mark.parametrize("params", ["default", "pass_through"])
def test_orthogonium_layers_run_on_lipkernels(make, x_shape, params):
    torch.manual_seed(0)
    ortho_params = {"default": reparametrizers.DEFAULT_ORTHO_PARAMS,
                    "pass_through": reparametrizers.BJORCK_PASS_THROUGH_ORTHO_PARAMS}[params]
    _assert_trains_alike(orthogonium, make(ortho_params), torch.randn(x_shape), _POWER_AND_BJORCK)


def test_orthogonium_ortho_params_build_layers_on_lipkernels():
    torch.manual_seed(0)
    peer = OrthoLinear(24, 16)
    layer = OrthoLinear(24, 16, ortho_params=orthogonium.ortho_params())
    kinds = [parametrize.type_before_parametrizations(module)
             for module in layer.parametrizations.weight]
    assert kinds == [orthogonium.PowerIteration, orthogonium.BjorckOrthogonalization]
    layer.load_state_dict(peer.state_dict())
    x = torch.randn(3, 24)
    _close(layer(x), peer(x), "output")


def test_orthogonium_orthogonalisers_without_a_lipkernels_op_are_reported_kept():
    torch.manual_seed(0)
    layer = OrthoLinear(16, 16, ortho_params=reparametrizers.EXP_ORTHO_PARAMS)
    report = orthogonium.adapt(layer)
    assert [name for name, _, _ in report.adapted] == ["parametrizations.weight.0"]
    assert report.kept == [("parametrizations.weight.1", "BatchedExponentialOrthogonalization",
                            "no lipkernels op computes this orthogonalisation")]
    assert "kept: no lipkernels op" in str(report)


@contextlib.contextmanager
def _cuda_on_the_cpu():
    """orthogonium's legacy SOC puts its tensors on CUDA when built (`.cuda()`, `device="cuda"`):
    here both mean the CPU, so that it builds on a machine without a GPU."""
    randn = torch.randn

    def randn_on_the_cpu(*args, device=None, **kwargs):
        return randn(*args, **kwargs)

    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self), \
            mock.patch.object(torch, "randn", randn_on_the_cpu):
        yield


@pytest.mark.parametrize("in_channels,out_channels,kernel_size,stride,size", [
    (8, 8, 3, 1, 8), (16, 8, 3, 1, 8), (4, 16, 3, 2, 8), (8, 8, 1, 1, 4)])
def test_orthogonium_legacy_soc_runs_on_lipkernels(in_channels, out_channels, kernel_size,
                                                   stride, size):
    """Its first training step runs the 50 initial iterations of its schedule, the second one."""
    torch.manual_seed(0)
    with _cuda_on_the_cpu():
        layer = skew_ortho_conv.SOC(in_channels, out_channels, kernel_size, stride=stride)
    _assert_trains_alike(orthogonium, layer, torch.randn(2, in_channels, size, size),
                         [("", "SOC")])


@pytest.mark.parametrize("make,x_shape", [
    (lambda: SpectralLinear(20, 30), (5, 20)),
    (lambda: SpectralConv2d(3, 8, 3), (2, 3, 8, 8)),
    (lambda: torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(12, 7),
                                                           n_power_iterations=4), (3, 12)),
    (lambda: torch.nn.utils.parametrizations.spectral_norm(
        torch.nn.ConvTranspose2d(4, 6, 3), dim=1), (2, 4, 5, 5))])
def test_torchlip_spectral_normalisation_runs_on_lipkernels(make, x_shape):
    torch.manual_seed(0)
    _assert_trains_alike(torchlip, make(), torch.randn(x_shape),
                         [("parametrizations.weight.0", "_SpectralNorm")])


def test_torchlip_bjorck_normalisation_is_reported_kept():
    report = torchlip.adapt(torch.nn.Sequential(SpectralLinear(8, 8)))
    assert [(name, kind) for name, kind, _ in report.kept] == [
        ("0.parametrizations.weight.1", "_BjorckNorm")]


@pytest.mark.parametrize("adapter,peer,package", [
    ("orthogonium", "orthogonium.reparametrizers", "orthogonium"),
    ("torchlip", "deel.torchlip.utils.bjorck_norm", "deel-torchlip")])
def test_adapters_name_the_missing_peer_and_lipkernels_imports_without_it(adapter, peer,
                                                                          package):
    script = (f"import sys; sys.modules[{peer!r}] = None\n"
              "import lipkernels, lipkernels.nn\n"
              "try:\n"
              f"    import lipkernels.adapters.{adapter}\n"
              "except ImportError as error:\n"
              "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert f"pip install {package}" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("in_channels,out_channels,stride", [(8, 8, 1), (4, 16, 2), (16, 8, 1)])
def test_orthogonium_legacy_soc_becomes_lipkernels_soc_conv2d(in_channels, out_channels,
                                                              stride):
    """to_soc_conv2d: the same single-iteration training step, and in eval the same outputs once
    the vectors have converged (orthogonium's first step runs init_iters iterations: 500 here;
    its v_q and lipkernels' ||M_q u_q|| agree then)."""
    torch.manual_seed(0)
    with _cuda_on_the_cpu():
        peer = skew_ortho_conv.SOC(in_channels, out_channels, 3, stride=stride)
    x = torch.randn(2, in_channels, 8, 8)
    peer.init_iters = 500
    peer(x)
    layer = orthogonium.to_soc_conv2d(peer)
    assert layer.training and (layer.train_terms, layer.eval_terms) == (6, 13)
    for training in (True, False):
        peer.train(training)
        layer.train(training)
        _close(layer(x), peer(x), f"output (training={training})")


def test_swap_maps_the_peers_layers_and_keeps_those_it_cannot():
    torch.manual_seed(0)
    with _cuda_on_the_cpu():
        soc = skew_ortho_conv.SOC(3, 8, 3)
    model = torch.nn.Sequential(SpectralConv2d(3, 3, 3, padding=1), soc, torch.nn.Flatten(),
                                SpectralLinear(8 * 8 * 8, 16), OrthoLinear(16, 10))
    swapped, report = lipkernels.nn.swap(model)
    assert [type(m).__name__ for m in swapped] == ["SOCConv2d", "SOCConv2d", "Flatten",
                                                   "SOCLinear", "ParametrizedOrthoLinear"]
    notes = [note for _, _, _, note in report.replaced]
    assert notes == ["deel-torchlip's layer: its weight is not carried",
                     "orthogonium's legacy SOC: its weight, bias and vectors carried",
                     "deel-torchlip's layer: its weight is not carried"]
    assert report.kept == [("4", "OrthoLinear", "a layer of orthogonium swap has no mapping for: "
                            "it keeps its own constraint (lipkernels.adapters.orthogonium.adapt "
                            "runs its normalisation on lipkernels ops)")]
    torch.testing.assert_close(swapped[1].weight, soc.unconstrained_conv_filter)
