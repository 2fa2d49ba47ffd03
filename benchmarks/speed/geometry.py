"""Speed of stage building and of the geometry functions on a synthetic BERT-base-shaped model.

``python -m benchmarks speed geometry [--params 100e6] [--repeats 3]`` (CPU, one thread; about a minute,
about 2.5 GB of memory for 100M parameters: a point, a target and the move's difference buffer).
Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.harness import Results, median_time


def _shapes(total: int) -> list[tuple[int, ...]]:
    """Tensor shapes like a BERT/ViT-base-sized model (~85M per 12 blocks + embeddings), up to ``total``."""
    h, f = 768, 3072
    block = [
        (h,),
        (h,),
        (h, h),
        (h,),
        (h, h),
        (h,),
        (h, h),
        (h,),
        (h, h),
        (h,),
        (h,),
        (h,),
        (f, h),
        (f,),
        (h, f),
        (h,),
    ]
    shapes: list[tuple[int, ...]] = [(30522, h), (512, h), (h,), (h,)]
    n = sum(torch.Size(s).numel() for s in shapes)
    while n < total:
        for s in block:
            shapes.append(s)
            n += torch.Size(s).numel()
    return shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options."""
    parser.add_argument("--params", type=float, default=100e6, help="parameters in the synthetic model")
    parser.add_argument("--repeats", type=int, default=3)


def run(args: argparse.Namespace, results: Results) -> None:
    """Time stage building and every geometry function; print and record the medians."""
    torch.manual_seed(0)

    import timm

    import hf_llpf.zoo  # noqa: F401  (registers cifar_resnet18)
    from hf_llpf import geometry as G
    from hf_llpf.stages import build_stages

    model = timm.create_model("cifar_resnet18", pretrained=False, num_classes=10)  # width 64, 11.2M params
    x = torch.randn(2, 3, 32, 32)
    build_stages(model, x)  # warm-up (first-call allocations)
    t = median_time(lambda: build_stages(model, x), args.repeats)
    plan = build_stages(model, x)
    print(f"build_stages(cifar_resnet18 width 64, batch 2x3x32x32): {t * 1000:.1f} ms  ({len(plan.stages)} stages)")
    results.add({"part": "geometry", "what": "build_stages cifar_resnet18 width 64", "ms": t * 1000})

    shapes = _shapes(int(args.params))
    a = [torch.randn(s) * 0.02 for s in shapes]
    b = [t_ + torch.randn(s) * 0.02 for t_, s in zip(a, shapes)]
    n = sum(t_.numel() for t_ in a)
    threads = torch.get_num_threads()
    print(
        f"geometry over {len(a)} float32 tensors, {n / 1e6:.1f}M parameters, {threads} thread(s), "
        f"median of {args.repeats}:"
    )
    var_b = G.variances(b)
    cur = [t_.clone() for t_ in a]
    rows = [
        ("variances", lambda: G.variances(a)),
        ("project_to_variance_", lambda: G.project_to_variance_(cur, var_b)),
        ("distances", lambda: G.distances(a, b)),
        ("total_distance", lambda: G.total_distance(a, b)),
        ("cosine_similarity", lambda: G.cosine_similarity(a, b)),
        ("distance_to_origin", lambda: G.distance_to_origin(a)),
        ("move_toward_ (step_a=1e-3)", lambda: G.move_toward_(cur, b, step_a=1e-3, step_f=0.0)),
    ]
    for name, fn in rows:
        ms = median_time(fn, args.repeats) * 1000
        print(f"  {name:<28} {ms:8.1f} ms")
        results.add({"part": "geometry", "what": name, "params": n, "ms": ms})
