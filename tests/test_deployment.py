"""lipkernels.export: the eval model as a program of plain torch operators, with the model's
outputs, for other batch sizes, saved and loaded in a process that cannot import lipkernels; on
a kernel backend, a program of lipkernels ops that loads where lipkernels is imported."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lipkernels
from helpers import require_backend
from lipkernels.nn import (AOLConv2d, AOLLinear, BCOPConv2d, BjorckLinear, CayleyConv2d,
                           CayleyLinear, CPLConv2d, CPLLinear, LipConvNet, MaxMin, SLLConv2d,
                           SLLLinear, SOCConv2d, SOCLinear)


def _models():
    torch.manual_seed(0)
    return {
        "LipConvNet": (LipConvNet(depth=5, init_channels=2, num_classes=3), (3, 32, 32)),
        "Cayley+SOC": (nn.Sequential(CayleyConv2d(3, 4, stride=2), MaxMin(),
                                     SOCConv2d(4, 4, eval_terms=8), nn.Flatten(),
                                     CayleyLinear(4 * 4 * 4, 5)), (3, 8, 8)),
        "BCOP+Bjorck": (nn.Sequential(BCOPConv2d(3, 4, 4, stride=2), MaxMin(),
                                      BCOPConv2d(4, 4, 3), nn.Flatten(),
                                      BjorckLinear(4 * 4 * 4, 5)), (3, 8, 8)),
        "CPL+SLL+AOL": (nn.Sequential(AOLConv2d(3, 4), CPLConv2d(4, 3, input_size=8),
                                      SLLConv2d(4, 5), nn.Flatten(),
                                      CPLLinear(4 * 8 * 8, 6), SLLLinear(4 * 8 * 8, 7),
                                      AOLLinear(4 * 8 * 8, 5)), (3, 8, 8)),
    }


@pytest.mark.parametrize("name", ["LipConvNet", "Cayley+SOC", "BCOP+Bjorck", "CPL+SLL+AOL"])
def test_program_computes_the_eval_model_at_any_batch(name):
    model, shape = _models()[name]
    program = lipkernels.export(model, (torch.randn(2, *shape),))
    assert model.training  # restored
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert targets and not any("lipkernels" in target for target in targets), targets
    model.eval()
    with torch.no_grad():
        for batch in (1, 2, 5):
            x = torch.randn(batch, *shape)
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_static_batch_program_refuses_other_batches():
    model, shape = _models()["Cayley+SOC"]
    program = lipkernels.export(model, (torch.randn(2, *shape),), dynamic_batch=False)
    program.module()(torch.randn(2, *shape))
    with pytest.raises(AssertionError, match=r"input.size\(\)\[0\] == 2"):
        program.module()(torch.randn(3, *shape))


def test_saved_program_runs_where_lipkernels_cannot_be_imported(tmp_path):
    model, shape = _models()["LipConvNet"]
    x = torch.randn(4, *shape)
    torch.export.save(lipkernels.export(model, (x,)), tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save((x, model.eval()(x)), tmp_path / "expected.pt")
    _run_without_lipkernels(tmp_path, f"""
        program = torch.export.load({str(tmp_path / "model.pt2")!r})
        x, expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)
    """)


def _run_without_lipkernels(tmp_path, body: str):
    """`body` (torch imported) in a Python process where importing lipkernels fails."""
    script = textwrap.dedent("""
        import sys

        class NoLipkernels:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "lipkernels":
                    raise ImportError("lipkernels is not importable here")

        sys.meta_path.insert(0, NoLipkernels())
        import torch
    """) + textwrap.dedent(body) + textwrap.dedent("""
        assert not any(name.startswith("lipkernels") for name in sys.modules)
    """)
    _run_python(tmp_path, script)


def _run_python(tmp_path, script: str):
    """`script` in a fresh Python process in tmp_path; fails with its stderr unless it ran to
    the end."""
    result = subprocess.run([sys.executable, "-c", script + '\nprint("ran to the end")'],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran to the end" in result.stdout


def _vanilla_layers():
    torch.manual_seed(0)
    return [(SOCConv2d(4, 8, 3), (4, 9, 7)), (SOCConv2d(4, 16, 3, stride=2), (4, 8, 6)),
            (SOCConv2d(8, 4, 5, bias=False, eval_terms=4), (8, 6, 6)),
            (SOCConv2d(4, 4, 3, eval_terms=2), (4, 5, 5)),
            (SOCConv2d(4, 4, 3, eval_terms=1), (4, 5, 5)),
            (SOCLinear(6, 9), (6,)), (SOCLinear(9, 6, bias=False), (9,)),
            (CayleyLinear(6, 9), (6,)), (CayleyLinear(9, 6), (9,)),
            (BjorckLinear(6, 9), (6,)), (BjorckLinear(9, 6, bias=False), (9,)),
            (BCOPConv2d(4, 6, 3), (4, 6, 5)), (BCOPConv2d(2, 8, 4, stride=2, bias=False),
                                               (2, 6, 4)),
            (AOLConv2d(4, 6, 3, 2), (4, 7, 6)), (AOLConv2d(3, 2, 3, padding_mode="circular"),
                                                 (3, 5, 5)),
            (AOLLinear(6, 4, bias=False), (6,))]


@pytest.mark.parametrize("index", range(16))
def test_vanilla_export_is_plain_torch_with_the_eval_outputs_at_any_size(index):
    """deel-torchlip's convention: SOC layers as plain convolutions in Horner's form (linear
    layers as one nn.Linear), Cayley linear layers as nn.Linear, in training mode too."""
    layer, shape = _vanilla_layers()[index]
    plain = layer.vanilla_export()
    modules = list(plain.modules())
    assert all(type(m).__module__.startswith("torch.nn") for m in modules), modules
    assert layer.training
    layer.eval()
    with torch.no_grad():
        for size in ((2, *shape), (3, *shape[:1], *(2 * d for d in shape[1:]))):
            x = torch.randn(size)
            torch.testing.assert_close(plain(x), layer(x), rtol=1e-5, atol=1e-5)


def test_deel_torchlip_vanilla_model_exports_lipkernels_layers(tmp_path):
    """torchlip's vanilla_model on a model of lipkernels layers: the constrained layers become
    plain torch modules (MaxMin, like torchlip's own activations, has none and stays), with the
    model's eval outputs; saved, the plain part loads where lipkernels cannot be imported."""
    torchlip = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    model = nn.Sequential(SOCConv2d(3, 4, stride=2), MaxMin(), SOCConv2d(4, 4, eval_terms=8),
                          nn.Flatten(), SOCLinear(4 * 4 * 4, 8), CayleyLinear(8, 5))
    vanilla = torchlip.vanilla_model(model, in_place=False)
    kinds = [type(m).__name__ for m in vanilla]
    assert kinds == ["Sequential", "MaxMin", "Sequential", "Flatten", "Linear", "Linear"], kinds
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vanilla(x), model.eval()(x), rtol=1e-5, atol=1e-5)
        plain = nn.Sequential(vanilla[2], vanilla[3], vanilla[4], vanilla[5])
        torch.save((plain, vanilla[:2](x), plain(vanilla[:2](x))), tmp_path / "plain.pt")
    _run_without_lipkernels(tmp_path, f"""
        plain, x, expected = torch.load({str(tmp_path / "plain.pt")!r}, weights_only=False)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    """)


def test_kernel_backend_program_loads_where_lipkernels_is_imported(tmp_path):
    """Traced on the C++ kernels, the graph calls lipkernels' ops: saved, it loads and runs in a
    process that imports lipkernels (which registers them), with the kernels' outputs."""
    require_backend("cpu", "cpp")
    model, shape = _models()["LipConvNet"]
    x = torch.randn(3, *shape)
    program = lipkernels.export(model, (x,), backend="cpp")
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"lipkernels.soc_exp.default", "lipkernels.max_min.default"} <= targets
    torch.export.save(program, tmp_path / "model.pt2")
    with lipkernels.use_backend("cpp"), torch.no_grad():
        torch.save((x, model.eval()(x)), tmp_path / "expected.pt")
    _run_python(tmp_path, textwrap.dedent(f"""
        import torch
        import lipkernels
        program = torch.export.load({str(tmp_path / "model.pt2")!r})
        x, expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)
    """))


def test_bad_arguments():
    with pytest.raises(TypeError, match="export: model must be a torch.nn.Module; got function"):
        lipkernels.export(lambda x: x, (torch.randn(1),))
    with pytest.raises(TypeError, match="export: example_inputs must be a tuple of the forward's "
                                        "inputs; got Tensor"):
        lipkernels.export(nn.Identity(), torch.randn(1))
