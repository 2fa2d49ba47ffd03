"""What the eval view buys on the CPU: one probe-sized pass per convolutional family, as the model runs and viewed.

    python -m benchmarks speed layout [--images 256] [--repeats 15] [names ...]

For each convolutional model of the families benchmark (its tiny variant, untrained: the time does not depend on
the weights) and for small_cnn, the median time of one eval-mode pass over ``--images`` digits images at the
family's size, as the model runs (NCHW) and through :func:`hf_llpf.evaluation.layout.eval_view` (channels-last
copy with its BatchNorm layers folded where the graph allows, state copied in first, as every probe and score
does), the ratio of the two, how many BatchNorm layers were folded, and the difference of the mean loss. The
BatchNorm statistics and affine weights are drawn at random first (seeded), so that a fold changes the weights as
it does on a trained model. Also one SGD step of batch 64 on small_cnn in both layouts (training stays NCHW; this
is what converting it would buy). One torch thread; medians, because these machines are shared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.families import FAMILIES
from benchmarks.harness import Results, median_time
from hf_llpf.evaluation import layout
from hf_llpf.evaluation.layout import channels_last_batch, eval_view
from hf_llpf.models.endpoints import create_model

EXTRA_MODELS = {"small_cnn": ("small_cnn", {}, None)}  # name -> (model, args, image size: None is 8x8)


def _models(names: list[str]) -> dict[str, tuple[str, dict, int | None]]:
    conv = {
        n: (f.model, f.model_args, f.image_size) for n, f in FAMILIES.items() if f.model not in ("vit", "bert", "gpt2")
    }
    every = {**EXTRA_MODELS, **conv}
    return {n: every[n] for n in names} if names else every


@torch.no_grad()
def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every BatchNorm's running statistics and affine weights drawn at random (seeded)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.affine:
                m.weight.copy_(1 + 0.5 * torch.randn(n, generator=g))
                m.bias.copy_(0.5 * torch.randn(n, generator=g))
    return model


def folded(model: torch.nn.Module) -> tuple[int, int]:
    """(BatchNorm layers its eval view folded, BatchNorm2d layers it has), after a pass through the view."""
    view = layout._VIEWS.get(model)
    total = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    return (len(view.folds) if view is not None else 0), total


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (the view is built on the first pass)
    return 1e3 * median_time(fn, repeats)


@torch.no_grad()
def pass_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[float, ...]:
    """(NCHW ms, channels-last ms without folds, view ms, |mean loss difference|) of one eval-mode pass over ``x``
    in batches of 128; each viewed pass copies the model's state in first, as a probe does."""
    model.eval()
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, len(x), 128)]
    fast = [channels_last_batch(b) for b in batches]

    def plain() -> float:
        return sum(float(F.cross_entropy(model(bx), by, reduction="sum")) for bx, by in batches)

    def view() -> float:
        runner, ok = eval_view(model, batches[0])
        return sum(float(F.cross_entropy(runner(bx), by, reduction="sum")) for bx, by in (fast if ok else batches))

    unfolded = layout._View(model, fold=False)

    def channels_last() -> float:
        unfolded.sync(model)
        return sum(float(F.cross_entropy(unfolded.runner(bx), by, reduction="sum")) for bx, by in fast)

    return *interleaved_ms([plain, channels_last, view], repeats), abs(plain() - view()) / len(x)


def interleaved_ms(fns: list, repeats: int) -> list[float]:
    """Median ms of each of ``fns``, called in turn ``repeats`` times, the order reversed every other time (a slow
    spell of the machine hits all of them, and none always runs on the caches its predecessor warmed)."""
    for fn in fns:
        fn()  # warm-up (the view is built on the first pass)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        pairs = list(zip(fns, times, strict=True))
        for fn, out in pairs if i % 2 == 0 else pairs[::-1]:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def _step_ms(memory_format: torch.memory_format, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model("small_cnn").to(memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 1, 8, 8).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (64,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return _median_ms(step, repeats)


def train_step_times(repeats: int) -> tuple[float, float]:
    """(NCHW ms, channels-last ms) of one SGD step of batch 64 on small_cnn at 8x8."""
    return _step_ms(torch.contiguous_format, repeats), _step_ms(torch.channels_last, repeats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options."""
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("names", nargs="*", help="families (default: small_cnn and every convolutional family)")


def run(args: argparse.Namespace, results: Results) -> None:
    """Time one eval pass per model in both layouts and one SGD step; print and record the figures."""
    threads = torch.get_num_threads()
    print(
        f"one eval pass over {args.images} images, batches of 128, median of {args.repeats}, in turn; "
        f"{threads} thread(s)"
    )
    print("model           | size | NCHW ms | channels-last ms | + folded ms | ratio | fold's ratio | BatchNorm "
          "folded | loss difference")  # fmt: skip
    ratios, folds = [], []
    for name, (model_name, model_args, size) in _models(args.names).items():
        torch.manual_seed(0)
        model = randomize_batchnorm(create_model(model_name, **{**model_args, "in_chans": 1, "num_classes": 10}))
        side = size or 8
        x, y = torch.randn(args.images, 1, side, side), torch.randint(0, 10, (args.images,))
        plain, cl, view, diff = pass_times(model, x, y, args.repeats)
        ratios.append(view / plain)
        done, total = folded(model)
        if done:
            folds.append(view / cl)
        cells = f"{plain:7.2f} | {cl:16.2f} | {view:11.2f} | {view / plain:5.2f} | {view / cl:12.2f}"
        print(f"{name:15} | {side:4d} | {cells} | {done:>7d} of {total:<5d} | {diff:.1e}", flush=True)
        results.add({"part": "layout", "model": name, "size": side, "nchw_ms": plain, "channels_last_ms": cl,
                     "view_ms": view, "folded": done, "batchnorm": total, "loss_difference": diff})  # fmt: skip
    print(f"ratio view / NCHW: {min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}")
    print(f"ratio folded / channels-last where a layer folds: {min(folds):.2f}-{max(folds):.2f}, "
          f"median {statistics.median(folds):.2f}")  # fmt: skip
    nchw, cl = train_step_times(args.repeats * 4)
    print(f"small_cnn SGD step, batch 64: NCHW {nchw:.2f} ms, channels-last {cl:.2f} ms ({cl / nchw:.2f}x)")
    results.add({"part": "layout", "model": "small_cnn SGD step, batch 64", "nchw_ms": nchw, "channels_last_ms": cl})
