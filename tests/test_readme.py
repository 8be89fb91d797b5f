"""The README's examples run and do what they say."""

import pathlib
import re

import torch

import lipkernels

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def example_namespace(marker="class FantasticFourConv2d"):
    """The namespace after running the README's one python block containing `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [block for block in blocks if marker in block]
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    return namespace


def test_lipconvnet_example_trains_and_bounds_its_lipschitz_constant(capsys):
    namespace = example_namespace("lipkernels.nn.LipConvNet(depth=10")
    assert namespace["model"].head.weight.grad is not None
    printed = float(capsys.readouterr().out)
    assert 1.0 <= printed < 1.001


def test_fantastic_four_conv_is_one_lipschitz_and_updates_its_vectors():
    layer = example_namespace()["FantasticFourConv2d"](6, 6, 3, padding=1, bias=False)
    before = [layer.u0.clone(), layer.u1.clone()]
    x = torch.randn(8, 6, 10, 10)
    y = layer(x)
    assert not torch.equal(layer.u0, before[0]) or not torch.equal(layer.u1, before[1])
    # The normalised filter's zero-padded conv has norm at most 1 (up to power-iteration slack).
    ratios = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert ratios.max().item() <= 1.0 + 1e-3
    y.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_certification_example_reports_clean_and_certified_accuracy(capsys):
    namespace = example_namespace("model = lipkernels.nn.LipConvNet(depth=5, init_channels=8)")
    result = namespace["result"]
    assert result.eps == (0.0, 36 / 255, 72 / 255)
    assert result.radii.shape == (16,) and (result.radii >= 0).all()
    # Certified accuracy can only fall as eps grows, and is at most the clean accuracy.
    assert result.accuracy[0] >= result.accuracy[1] >= result.accuracy[2] >= 0
    assert "tensor(" in capsys.readouterr().out


def test_export_example_saves_a_program_with_the_models_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = example_namespace("lipkernels.export(model")
    assert (tmp_path / "lipconvnet.pt2").is_file()
    assert float(capsys.readouterr().out.split("(")[1].split(",")[0].rstrip(")")) < 1e-5
    loaded = torch.export.load(tmp_path / "lipconvnet.pt2").module()
    images = namespace["images"]
    torch.testing.assert_close(loaded(images), namespace["program"].module()(images))


def test_swap_example_replaces_the_layers_and_reports_the_batch_norm(capsys):
    namespace = example_namespace("lipkernels.nn.swap(cnn)")
    model, report = namespace["model"], namespace["report"]
    assert [name for name, *_ in report.replaced] == ["0", "3", "6"]
    assert [(name, kind) for name, kind, _ in report.kept] == [("2", "BatchNorm2d")]
    assert isinstance(model[0], lipkernels.nn.SOCConv2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "replaced 3 module(s), kept 1:" in capsys.readouterr().out


def test_walkthrough_swaps_trains_certifies_and_exports_one_cnn(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = example_namespace("swapped-cnn.pt2")
    model, result, bound = namespace["swapped"], namespace["result"], namespace["bound"]
    assert [name for name, *_ in namespace["report"].replaced] == ["0", "2", "5"]
    assert isinstance(model[5], lipkernels.nn.SOCLinear) and 1.0 <= bound < 1.01
    assert result.accuracy.shape == (2,) and result.accuracy[0] >= result.accuracy[1]
    loaded = torch.export.load(tmp_path / "swapped-cnn.pt2").module()
    images = namespace["images"][:5]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=1e-5, atol=1e-5)
    assert "replaced 3 module(s)" in capsys.readouterr().out


def test_adapter_example_runs_the_peers_layers_on_lipkernels(capsys):
    import pytest

    pytest.importorskip("orthogonium")
    pytest.importorskip("deel.torchlip")
    namespace = example_namespace("from lipkernels.adapters import orthogonium, torchlip")
    printed = capsys.readouterr().out
    assert "BatchedPowerIteration -> PowerIteration" in printed
    assert "_SpectralNorm -> SpectralNorm" in printed
    assert namespace["y"].shape == (8, 32)
