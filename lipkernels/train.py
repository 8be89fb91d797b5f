"""``python -m lipkernels.train``: train a Lipschitz network, certify it, save results and plots.

Data: scikit-learn's digits (shipped with the package, so it works offline: 1797 8 x 8 images,
upsampled 4x by pixel replication to 32 x 32) or CIFAR-10 from its python-pickle batches
(``--cifar-dir`` holding data_batch_1..5 and test_batch). Networks: LipConvNet with SOC layers
(``--layers soc``) or the same plan with Cayley layers (``--layers cayley``) or BCOP
convolutions and a BjorckLinear head (``--layers bcop``), or the plan on AOL layers
(``--layers aol``) or on the convex potential layers between AOL ones (``--layers cpl``,
``--layers sll``). The loss is the
multi-class hinge whose zero certifies the training radius (``certified_margin``). Each epoch
prints a progress bar (tqdm) and records the loss, clean accuracy and certified accuracy at the
radii ``--eps`` measured in the original image space: the network's provable bound
(``lipkernels.lipschitz_bound``) times that of the input map (4 for the replication of digits, 1
for CIFAR-10). Writes ``<out>/<data>-<layers>.json`` and the plots ``-curves.png`` (loss and
accuracy per epoch) and ``-certified.png`` (certified accuracy against eps).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import pickle
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .certification import certified_margin, certify
from .model_bound import lipschitz_bound
from .nn import (AOLConv2d, AOLLinear, BCOPConv2d, BjorckLinear, CayleyConv2d, CayleyLinear,
                 CPLConv2d, CPLLinear, LipConvNet, MaxMin, SLLConv2d, SLLLinear, cached)

EPS = (0.0, 36 / 255, 72 / 255, 108 / 255)
# The digits' 8 x 8 images are replicated 4 x 4 to the networks' 32 x 32 input: a linear map of
# norm exactly 4 (each pixel copied 16 times).
DIGITS_UPSAMPLING = 4


@dataclass
class Data:
    """Images in [0, 1] as the network sees them, labels, and the Lipschitz constant of the map
    from the original image space to the network's input."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    input_scale: float
    classes: int


def digits(test_fraction: float = 0.2, seed: int = 0) -> Data:
    """scikit-learn's digits, pixel values / 16, a seeded split, upsampled to 32 x 32."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test_count = int(len(labels) * test_fraction)
    upsampled = images.repeat_interleave(DIGITS_UPSAMPLING, 2).repeat_interleave(
        DIGITS_UPSAMPLING, 3)
    test, train = order[:test_count], order[test_count:]
    return Data((upsampled[train], labels[train]), (upsampled[test], labels[test]),
                float(DIGITS_UPSAMPLING), 10)


def _cifar_batch(path: pathlib.Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    data, labels = batch[b"data"], batch[b"labels"]
    images = torch.tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
    return images.float() / 255.0, torch.tensor(labels, dtype=torch.long)


def cifar10(directory) -> Data:
    """CIFAR-10 from the python-pickle batches in `directory` (data_batch_1..5, test_batch)."""
    directory = pathlib.Path(directory)
    names = [f"data_batch_{index}" for index in range(1, 6)]
    missing = [name for name in [*names, "test_batch"] if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"cifar10: {directory} lacks {', '.join(missing)} (the "
                                f"python-pickle batches of CIFAR-10)")
    parts = [_cifar_batch(directory / name) for name in names]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return Data(train, _cifar_batch(directory / "test_batch"), 1.0, 10)


# The orthogonal layer pairs of the plan's other networks: (conv, linear).
PLAN_LAYERS = {"cayley": (CayleyConv2d, CayleyLinear), "bcop": (BCOPConv2d, BjorckLinear)}

# The layers of the AOL plan: (conv, linear) keeping C channels in and out (AOL's own, or the
# residual convex potential layers), between AOL layers that change the shape.
AOL_PLAN_LAYERS = {"aol": (AOLConv2d, AOLLinear), "cpl": (CPLConv2d, CPLLinear),
                   "sll": (SLLConv2d, SLLLinear)}


def plan_convnet(layers: str, in_channels: int, classes: int, width: int) -> nn.Sequential:
    """LipConvNet's plan with the `layers` family's conv and linear layers (PLAN_LAYERS): five
    blocks of a stride-1 conv and a stride-2 one (doubling the channels), 3 x 3 but in the last
    block (1 x 1: its input is 2 x 2), MaxMin after each, and a linear head on the 1 x 1 output
    of a 32 x 32 input."""
    conv, linear = PLAN_LAYERS[layers]
    modules, channels = [], in_channels
    for block in range(5):
        out, kernel = width * 2 ** block, 1 if block == 4 else 3
        modules += [conv(channels, out, kernel), MaxMin(), conv(out, 2 * out, kernel, stride=2),
                    MaxMin()]
        channels = 2 * out
    return nn.Sequential(*modules, nn.Flatten(), linear(channels, classes))


def aol_convnet(layers: str, in_channels: int, classes: int, width: int) -> nn.Sequential:
    """The plan of LipConvNet on the AOL_PLAN_LAYERS, which keep channels and image size: an AOL
    3 x 3 stem to `width` channels, then five blocks of the layer (AOL: 3 x 3 and MaxMin; CPL,
    SLL: the residual step, inner width = channels, CPL's vector at the block's image size) and
    a pixel unshuffle with an AOL 1 x 1 conv from 4 C to 2 C channels (a stride-2 2 x 2 conv
    that loses no pixel, where a strided AOL conv would drop three in four: the AOL networks
    downsample by concatenation pooling alike), then the layer on the 1 x 1 output of a
    32 x 32 input (for AOL its linear layer, with MaxMin) and an AOL head."""
    conv, linear = AOL_PLAN_LAYERS[layers]
    activation = [MaxMin()] if layers == "aol" else []
    modules, channels, size = [AOLConv2d(in_channels, width, 3)], width, 32
    for block in range(5):
        kernel = 1 if block == 4 else 3
        extra = {"input_size": size} if conv is CPLConv2d else {}
        modules += [conv(channels, channels, kernel, **extra), *activation, nn.PixelUnshuffle(2),
                    AOLConv2d(4 * channels, 2 * channels, 1), *activation]
        channels, size = 2 * channels, size // 2
    return nn.Sequential(*modules, nn.Flatten(), linear(channels, channels), *activation,
                         AOLLinear(channels, classes))


def build_model(layers: str, in_channels: int, classes: int, width: int) -> nn.Module:
    if layers == "soc":
        return LipConvNet(depth=5, init_channels=width, num_classes=classes,
                          in_channels=in_channels)
    if layers in AOL_PLAN_LAYERS:
        return aol_convnet(layers, in_channels, classes, width)
    return plan_convnet(layers, in_channels, classes, width)


def _progress(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional; the epoch summary line is printed anyway
        return iterable
    return tqdm(iterable, **kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], input_scale: float,
             eps, batch_size: int) -> dict:
    """Clean and certified accuracy (image-space radii) of the eval-mode model on `data`; the
    layers' derived weights (SOC's filters, CPL's 100-iteration sigma) computed once for all
    batches (`lipkernels.nn.cached()`)."""
    model.eval()
    images, labels = data
    with cached():
        logits = torch.cat([model(images[i:i + batch_size])
                            for i in range(0, len(labels), batch_size)])
    bound = lipschitz_bound(model) * input_scale
    result = certify(logits, labels, bound, eps=list(eps))
    return {"lipschitz_bound": bound, "accuracy": result.accuracy.tolist(), "eps": list(eps)}


def train(data: Data, layers: str = "soc", epochs: int = 10, batch_size: int = 64,
          lr: float = 1e-3, width: int = 16, train_eps: float = 36 / 255, eps=EPS,
          seed: int = 0) -> dict:
    """Train and evaluate each epoch; returns the results (also what the JSON file holds)."""
    torch.manual_seed(seed)
    images, labels = data.train
    model = build_model(layers, images.shape[1], data.classes, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # A zero hinge loss certifies train_eps in image space: the margin is sqrt(2) L eps with
    # L the input map's constant times an orthogonal network's 1.
    margin = certified_margin(train_eps, data.input_scale)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(labels))
        batches = range(0, len(labels), batch_size)
        for i in _progress(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False):
            index = order[i:i + batch_size]
            loss = F.multi_margin_loss(model(images[index]), labels[index], margin=margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(index), seen + len(index)
        seconds = time.perf_counter() - start
        result = evaluate(model, data.test, data.input_scale, eps, batch_size)
        history.append({"epoch": epoch, "loss": total / seen, "seconds": seconds, **result})
        certified = ", ".join(f"{e:.3f}: {a:.3f}" for e, a in zip(eps, result["accuracy"]))
        print(f"epoch {epoch}: loss {total / seen:.4f}, {seconds:.1f} s, accuracy at eps "
              f"{certified}, bound {result['lipschitz_bound']:.6f}", flush=True)
    return {"layers": layers, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "width": width, "train_eps": train_eps, "margin": margin,
            "input_scale": data.input_scale, "train_size": len(labels),
            "test_size": len(data.test[1]), "history": history}


def save_plots(results: dict, stem: pathlib.Path) -> list[pathlib.Path]:
    """The loss and accuracy curves, and the last epoch's certified accuracy against eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results["history"]
    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [h["loss"] for h in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="training hinge loss")
    for column, eps in enumerate(history[-1]["eps"]):
        accuracy_axis.plot(epochs, [h["accuracy"][column] for h in history], marker="o",
                           label="clean" if eps == 0 else f"certified, eps {eps * 255:.0f}/255")
    accuracy_axis.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1))
    accuracy_axis.legend(fontsize=7)
    figure.tight_layout()
    curves = stem.with_name(stem.name + "-curves.png")
    figure.savefig(curves, dpi=100)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(4.5, 3.5))
    axis.plot([e * 255 for e in history[-1]["eps"]], history[-1]["accuracy"], marker="o")
    axis.set(xlabel="eps x 255 (l2, image space)", ylabel="certified test accuracy",
             ylim=(0, 1), title=f"{results['data']} {results['layers']}")
    figure.tight_layout()
    certified = stem.with_name(stem.name + "-certified.png")
    figure.savefig(certified, dpi=100)
    plt.close(figure)
    return [curves, certified]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lipkernels.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--cifar-dir", help="the CIFAR-10 python-pickle batches (--data cifar10)")
    parser.add_argument("--layers", choices=("soc", *PLAN_LAYERS, *AOL_PLAN_LAYERS),
                        default="soc")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16, help="channels of the first block")
    parser.add_argument("--limit", type=int, help="train and test on at most this many images")
    parser.add_argument("--out", default=".", help="folder for the JSON file and the plots")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.data == "cifar10" and not args.cifar_dir:
        _parser().error("--data cifar10 needs --cifar-dir")
    for name in ("epochs", "batch_size", "width", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _parser().error(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    data = digits() if args.data == "digits" else cifar10(args.cifar_dir)
    if args.limit:
        data.train = tuple(t[:args.limit] for t in data.train)
        data.test = tuple(t[:args.limit] for t in data.test)
    results = train(data, args.layers, args.epochs, args.batch_size, args.lr, args.width)
    results["data"] = args.data
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.data}-{args.layers}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    for path in [stem.with_suffix(".json"), *save_plots(results, stem)]:
        print(f"wrote {path}")
    return 0 if all(math.isfinite(h["loss"]) for h in results["history"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
