"""python -m lipkernels.train: the data loaders (digits, and CIFAR-10's python-pickle batches on
files made here), the Cayley network, and a short run that writes its results and plots."""

import json
import pickle

import pytest
import torch

import lipkernels
from lipkernels import train


def _write_cifar(directory, per_batch=4):
    """CIFAR-10's format: pickled dicts with b"data" (N, 3072) uint8 rows (R, G, B planes of
    32 x 32) and b"labels"; returns the images written, in order."""
    generator = torch.Generator().manual_seed(0)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = torch.randint(0, 256, (per_batch, 3072), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (per_batch,), generator=generator).tolist()
        with open(directory / name, "wb") as file:
            pickle.dump({b"data": data.numpy(), b"labels": labels}, file)
        written.append((data, labels))
    return written


def test_cifar10_reads_the_pickle_batches(tmp_path):
    written = _write_cifar(tmp_path)
    data = train.cifar10(tmp_path)
    images, labels = data.train
    assert images.shape == (20, 3, 32, 32) and data.test[0].shape == (4, 3, 32, 32)
    first, first_labels = written[0]
    # Row r of a batch: its first 1024 bytes are the red plane, row-major.
    assert torch.equal(images[0, 0], first[0, :1024].reshape(32, 32).float() / 255)
    assert torch.equal(images[1, 2], first[1, 2048:].reshape(32, 32).float() / 255)
    assert labels[:4].tolist() == first_labels and data.input_scale == 1.0
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        train.cifar10(tmp_path)


def test_digits_are_replicated_to_32x32_with_input_scale_4():
    data = train.digits()
    images, labels = data.train
    assert images.shape[1:] == (1, 32, 32) and len(labels) + len(data.test[1]) == 1797
    assert 0 <= images.min() and images.max() <= 1
    # Each 8 x 8 pixel is a 4 x 4 block: the upsampling has norm 4 exactly.
    blocks = images[:5].unfold(2, 4, 4).unfold(3, 4, 4)
    assert (blocks == blocks[..., :1, :1]).all() and data.input_scale == 4.0
    small = images[:5, :, ::4, ::4]
    assert torch.allclose(images[:5].flatten(1).norm(dim=1), 4 * small.flatten(1).norm(dim=1))


@pytest.mark.parametrize("layers", ["cayley", "bcop"])
def test_plan_networks_are_one_lipschitz(layers):
    """Cayley's bound is 1 by construction, BCOP's and Björck's certified within 1e-9 of it in
    float64."""
    model = train.plan_convnet(layers, 1, 10, 2).double()
    assert 1.0 <= lipkernels.lipschitz_bound(model) <= 1 + 1e-9
    x, y = torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.randn(4, 1, 32, 32,
                                                                      dtype=torch.float64)
    with torch.no_grad():
        ratios = (model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert (ratios <= 1 + 1e-9).all() and model(x).shape == (4, 10)


@pytest.mark.parametrize("layers", ["soc", "cayley", "bcop", "aol", "cpl", "sll"])
def test_a_short_run_writes_results_and_plots(tmp_path, capsys, layers):
    assert train.main(["--layers", layers, "--epochs", "2", "--limit", "48", "--width", "2",
                       "--batch-size", "16", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / f"digits-{layers}.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert results["train_size"] == results["test_size"] == 48
    for entry in results["history"]:
        accuracy = entry["accuracy"]
        assert all(a >= b for a, b in zip(accuracy, accuracy[1:]))  # falls as eps grows
        # The input map's 4 times each network's bound: 1, or a little below where AOL
        # layers (bound below 1) make part of the network.
        assert entry["lipschitz_bound"] >= (3.9 if layers in ("aol", "cpl", "sll") else 4.0)
        assert entry["seconds"] > 0
    for suffix in ("curves", "certified"):
        assert (tmp_path / f"digits-{layers}-{suffix}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capsys.readouterr()
    assert "epoch 2: loss" in captured.out and "epoch 1/2" in captured.err  # the progress bar


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs must be >= 1; got 0"),
    (["--data", "cifar10"], "--data cifar10 needs --cifar-dir"),
])
def test_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit):
        train.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("layers", ["aol", "cpl", "sll"])
def test_aol_and_convex_potential_networks_are_one_lipschitz(layers):
    """AOL's bound is below 1 by construction, SLL's 1; CPL's certificate holds its h to the
    certified operator norms (after its vectors converge), within 1% of 1 here."""
    torch.manual_seed(0)
    model = train.build_model(layers, 1, 10, 2).double()
    x, y = torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.randn(4, 1, 32, 32,
                                                                      dtype=torch.float64)
    for _ in range(100 if layers == "cpl" else 1):  # the training calls converge CPL's vectors
        model(x)
    bound = lipkernels.lipschitz_bound(model.eval())
    assert bound <= (1.01 if layers == "cpl" else 1.0)
    with torch.no_grad():
        ratios = (model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert (ratios <= bound * (1 + 1e-12)).all() and model(x).shape == (4, 10)
