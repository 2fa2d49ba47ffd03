"""The GPU check (issue 36): four connects in one process, each part printed as it finishes, within a time budget.

On a GPU machine, from the repository root (no endpoint carried, nothing downloaded; where the image lacks
``datasets`` and ``pydantic``, as the lent machines' does, their wheels travel in ``.whl/`` and are installed first:
docs/benchmarks.md, "The GPU check", gives both commands):

    PYTHONPATH=$PWD python3 -m benchmarks gpu check [--budget-s 300]
    PYTHONPATH=$PWD python3 -m benchmarks gpu check --smoke --no-record   # tiny sizes: about a minute on a CPU

The parts, in this order (every endpoint is made here, from seeds 0 and 1):

1. ``demo``: the demo's pair (``small_cnn`` on the built-in digits, :class:`~hf_llpf.config.TrainRecipe`'s
   defaults, as ``make demo``) connected with the demo's settings (the defaults);
2. ``resnet18``: the families' ``resnet18`` (``cifar_resnet18``) at CIFAR size (width 64, 32x32 images), trained
   briefly on generated CIFAR-shaped data (``gpu m2m``'s), connected with the families' settings and its recipe's
   stages (``recipes/resnet18-cifar10-llpf.yaml``), ``max_ticks`` and ``save_every`` set for the budget;
3. ``gpt2-124m``: ``python -m benchmarks big``'s 124M GPT-2 pair (10 AdamW steps each, here, on the device),
   connected with its :data:`~benchmarks.big.CONNECT` settings and three stages, unsharded, in this process;
4. ``gpt2-124m-fsdp1``: the same connect under ``torchrun --standalone --nproc_per_node 1`` with
   ``devices.sharding=fsdp``: the sharded code path over a process group of one (the one child process).

Each part prints one line when it finishes: its connect's wall time, ticks, ticks per second, peak memory (GPU:
``torch.cuda.max_memory_allocated``, reset before each connect; without a GPU the peak RSS, labelled so, reset
through ``/proc/self/clear_refs`` where the kernel allows it) and the share of a tick outside SGD, from the run's
profile phases (``summary.run.timing``; ``benchmarks.big.tick_split``: SGD against the tick's other parts, and
big's overhead share, moves + corrections + point writes + checkpoint). A part whose estimated time is more than
what is left of ``--budget-s`` is printed as skipped; the torchrun child is stopped at the budget. Rows go to
``benchmarks/results/gpu.jsonl`` (``--no-record``: none), a smoke row marked ``smoke``.

Sizing (estimates on one H100, NOT measurements: the check has not been run on a GPU): demo 60 s, resnet18 90 s,
the 124M model 60 s unsharded with its endpoints and 45 s sharded over one process (75 s where that part makes the
endpoints); about 4 to 5 minutes with the imports. docs/benchmarks.md, "The GPU check".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import big, harness

OUT = harness.CACHE / "gpu" / "check"
GPT2_124M = {"layers": 12, "width": 768, "heads": 12, "vocab": 50257}
GPT2_SMOKE = {"layers": 3, "width": 32, "heads": 2, "vocab": 100}


@dataclass
class Part:
    """One part of the check: its name, what it is, its estimated seconds (or their function of the context: the
    GPT-2 parts add the pair's making where no earlier part made it) and the function that runs it."""

    name: str
    what: str
    estimate_s: float | Callable[[dict[str, Any]], float]
    run: Callable[[dict[str, Any]], dict[str, Any]]

    def estimate(self, ctx: dict[str, Any]) -> float:
        """The estimated seconds of this part in ``ctx``."""
        return self.estimate_s(ctx) if callable(self.estimate_s) else self.estimate_s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This run's options."""
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the GPU where there is one)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds for the whole check (default 300)")


# ------------------------------------------------------------------------------------------ peak memory
def reset_peak(device: torch.device) -> None:
    """Start a part's peak memory: the GPU allocator's statistics, or this process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # "5" resets VmHWM (proc(5)); where refused, the peak since the start
        Path("/proc/self/clear_refs").write_text("5")


def peak(device: torch.device) -> tuple[str, float | None]:
    """(label, MiB) of the peak since :func:`reset_peak`."""
    if device.type == "cuda":
        return "peak GPU memory", torch.cuda.max_memory_allocated() / 2**20
    kib = harness.peak_rss_kib()
    return "peak RSS (CPU, no GPU)", kib / 1024 if kib is not None else None


# ------------------------------------------------------------------------------------------ the figures of a run
def figures(run: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """A connect's figures from its ``summary.run``: ticks, SGD iterations, ticks per second and the shares."""
    ticks = int(run.get("ticks") or 0)
    split = big.tick_split(run.get("timing") or {}, ticks)
    outside = 1 - split["sgd"] / split["tick"] if split["tick"] else None
    return {"ticks": ticks, "sgd_iters": run.get("sgd_iters"), "wall_s": round(wall_s, 2),
            "ticks_per_s": round(ticks / wall_s, 3) if wall_s > 0 else None, "outside_sgd": outside,
            "overhead_share": split["overhead_share"], "per_tick_s": split}  # fmt: skip


def line(index: int, count: int, row: dict[str, Any]) -> str:
    """The printed line of a finished or skipped part."""
    head = f"[{index}/{count}] {row['part']}"
    if row.get("skipped"):
        return f"{head}: skipped ({row['skipped']})"
    if row.get("failed"):
        return f"{head}: FAILED ({row['failed']})"
    mem = f"{row['peak_label']} {row['peak_mib']:,.0f} MiB" if row.get("peak_mib") is not None else "peak unknown"
    outside = f"{row['outside_sgd']:.1%}" if row.get("outside_sgd") is not None else "–"
    overhead = f"{row['overhead_share']:.1%}" if row.get("overhead_share") is not None else "–"
    return (f"{head}: {row['wall_s']:.1f} s, {row['ticks']} ticks, {row['ticks_per_s']:.3f} ticks/s, "
            f"{row['sgd_iters']} SGD iterations, {mem}, outside SGD {outside} of a tick (moves+corr.+writes+ckpt "
            f"{overhead}); endpoints {row['endpoints_s']:.1f} s")  # fmt: skip


def run_parts(parts: list[Part], ctx: dict[str, Any], *, budget_s: float, record: Callable[[dict], Any]) -> list[dict]:
    """Run ``parts`` in order, each only when its estimate fits what is left of ``budget_s``; print each line as the
    part finishes and ``record`` its row. A part that raises is printed as FAILED and the next one runs."""
    start, rows = time.perf_counter(), []
    for i, part in enumerate(parts, 1):
        left = budget_s - (time.perf_counter() - start)
        row: dict[str, Any] = {"run": "check", "part": part.name, "what": part.what, "smoke": ctx["smoke"]}
        if part.estimate(ctx) > left:
            row["skipped"] = f"estimated {part.estimate(ctx):.0f} s, {max(left, 0):.0f} s left of the budget"
        else:
            ctx["left_s"] = left
            try:
                row.update(part.run(ctx))
            except Exception as err:  # the check goes on: the line says what failed
                row["failed"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err) else ''}"
        print(line(i, len(parts), row), flush=True)
        rows.append(record(row))
    return rows


# ------------------------------------------------------------------------------------------ the parts
def _connect_in_process(ctx: dict[str, Any], call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call`` (a connect returning a :class:`~hf_llpf.run.reader.RunPath`) between peak resets; its figures."""
    reset_peak(ctx["device"])
    t = time.perf_counter()
    path = call()
    wall = time.perf_counter() - t
    label, mib = peak(ctx["device"])
    return {**figures(path.summary["run"], wall), "peak_label": label, "peak_mib": mib}


def demo(ctx: dict[str, Any]) -> dict[str, Any]:
    """The demo's pair and settings (smoke: one epoch each, ``max_ticks`` 5, M2M named)."""
    from hf_llpf.api import connect
    from hf_llpf.config import TrainRecipe
    from hf_llpf.data.bundle import load_data

    data = load_data("digits")
    t = time.perf_counter()
    recipe = {"epochs": 1} if ctx["smoke"] else {}
    a, b, _ = harness.endpoint_pair(TrainRecipe(seed=0, **recipe), TrainRecipe(seed=1, **recipe), data)
    made = time.perf_counter() - t
    config = {"max_ticks": 5, "method": "m2m"} if ctx["smoke"] else None  # 1 epoch: auto may find linear enough
    row = _connect_in_process(ctx, lambda: connect(a, b, data, config=config, run_dir=OUT / "demo",
                                                    exist="overwrite", progress=False))  # fmt: skip
    return {**row, "endpoints_s": made}


def resnet18(ctx: dict[str, Any]) -> dict[str, Any]:
    """The families' resnet18 at CIFAR size on generated CIFAR-shaped data (smoke: width 8, 128 images)."""
    from benchmarks.families import CPU_CONNECT, recipe_stages
    from benchmarks.gpu.m2m import generated_cifar, train_briefly
    from hf_llpf.api import connect
    from hf_llpf.config import DataConfig
    from hf_llpf.data.bundle import DataBundle
    from hf_llpf.models.endpoints import as_endpoint, create_model

    smoke = ctx["smoke"]
    n_train, n_test, steps = (128, 64, 2) if smoke else (2000, 500, 150)  # 2000: the exact certificate's route
    data = DataBundle(None, None, generated_cifar(n_train, 0), generated_cifar(n_test, 1), 10,
                      DataConfig(source="generated-cifar"))  # fmt: skip
    t, pair = time.perf_counter(), []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("cifar_resnet18", num_classes=10, **({"width": 8} if smoke else {}))
        train_briefly(model, data, ctx["device"], steps=steps, seed=seed)
        pair.append(as_endpoint(model))
    made = time.perf_counter() - t
    config = {**CPU_CONNECT, **recipe_stages("resnet18-cifar10-llpf.yaml"), "batch_size": 64 if smoke else 256,
              "max_ticks": 4 if smoke else 40, "save_every": 5}  # fmt: skip
    row = _connect_in_process(ctx, lambda: connect(pair[0], pair[1], data, config=config, run_dir=OUT / "resnet18",
                                                    exist="overwrite", progress=False))  # fmt: skip
    return {**row, "endpoints_s": made}


def _gpt2_pair(ctx: dict[str, Any]) -> dict[str, Any]:
    """big's corpus and endpoints (made once, on the device, in this process) and its three stages (smoke: and
    ``loss_ceiling=null``)."""
    if "gpt2" not in ctx:
        model_args = GPT2_SMOKE if ctx["smoke"] else GPT2_124M
        t = time.perf_counter()
        device = "cuda" if ctx["device"].type == "cuda" else "cpu"
        corpus, (a, b), _ = big.endpoints(OUT / "gpt2", model_args=model_args, steps=3 if ctx["smoke"] else 10,
                                          threads=ctx["threads"], device=device, in_process=True)  # fmt: skip
        stages = [big.stages_override(model_args["layers"])]
        if ctx["smoke"]:  # no ceiling: one SGD iteration every tick, so the smoke run trains (sharded too)
            stages.append("loss_ceiling=null")
        ctx["gpt2"] = {"corpus": corpus, "a": a, "b": b, "stages": stages, "seconds": time.perf_counter() - t}
    return ctx["gpt2"]


def gpt2_unsharded(ctx: dict[str, Any]) -> dict[str, Any]:
    """big's connect of the 124M pair through ``hf_llpf.cli.main`` in this process (its printout kept quiet)."""
    from hf_llpf.cli import main as cli

    pair, run = _gpt2_pair(ctx), OUT / "gpt2-unsharded"
    argv = big.connect_argv(run, pair["a"], pair["b"], pair["corpus"], threads=ctx["threads"], extra=pair["stages"])
    reset_peak(ctx["device"])
    printed, t = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = cli(argv)
    wall = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"hf-llpf connect exited {code}: {printed.getvalue()[-2000:]}")
    label, mib = peak(ctx["device"])
    summary = json.loads((run / "path_metrics.json").read_text())["summary"]["run"]
    shutil.rmtree(run, ignore_errors=True)  # a point is the model's size
    return {**figures(summary, wall), "peak_label": label, "peak_mib": mib, "endpoints_s": pair.pop("seconds", 0.0)}


def gpt2_sharded_one(ctx: dict[str, Any]) -> dict[str, Any]:
    """The same connect under ``torchrun --nproc_per_node 1`` with ``sharding=fsdp``, stopped at the budget."""
    pair, run = _gpt2_pair(ctx), OUT / "gpt2-fsdp1"
    try:
        measured = big.connect(run, pair["a"], pair["b"], pair["corpus"], processes=1, sharded=True,
                               threads=ctx["threads"], extra=pair["stages"], timeout=ctx["left_s"])  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise TimeoutError(f"stopped at the budget, after {err.timeout:.0f} s") from None
    except SystemExit as err:  # big.connect exits with the child's output when the connect fails
        raise RuntimeError(str(err.code)) from None
    finally:
        shutil.rmtree(run, ignore_errors=True)
    (rank,) = measured["ranks"]
    gpu = rank.get("peak_gpu_mib")
    label, mib = ("peak GPU memory", gpu) if gpu is not None else ("peak RSS (CPU, no GPU)", rank["peak_rss_mib"])
    launched = measured["run"].get("launch") or {}
    return {**figures(measured["run"], rank["seconds"]), "peak_label": label, "peak_mib": mib,
            "endpoints_s": pair.pop("seconds", 0.0), "process_s": measured["wall_s"],
            "processes": launched.get("processes"), "sharding": launched.get("sharding")}  # fmt: skip


def parts(smoke: bool) -> list[Part]:
    """The four parts with their estimates (GPU: on one H100, not measured; smoke: this CPU's order of size)."""
    demo_s, resnet_s, pair_s, unsharded_s, sharded_s = (10, 10, 5, 5, 30) if smoke else (60, 90, 30, 30, 45)

    def with_pair(seconds: float) -> Callable[[dict[str, Any]], float]:
        return lambda ctx: seconds + (0 if "gpt2" in ctx else pair_s)

    return [
        Part("demo", "small_cnn on digits, the demo's settings", demo_s, demo),
        Part("resnet18", "cifar_resnet18 at CIFAR size, the families' settings", resnet_s, resnet18),
        Part("gpt2-124m", "big's GPT-2 pair, unsharded", with_pair(unsharded_s), gpt2_unsharded),
        Part("gpt2-124m-fsdp1", "big's GPT-2 pair, sharding=fsdp over one torchrun process", with_pair(sharded_s),
             gpt2_sharded_one),
    ]  # fmt: skip


def run(args: argparse.Namespace, results: harness.Results) -> None:
    """Run the parts within the budget, print each as it finishes, then the table; exit 1 when a part failed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the connects' Accelerator chooses alike
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"gpu check: device {device} ({name}), budget {args.budget_s:.0f} s{', smoke sizes' if args.smoke else ''}",
          flush=True)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    ctx = {"smoke": args.smoke, "device": device, "threads": args.threads}
    start = time.perf_counter()
    rows = run_parts(parts(args.smoke), ctx, budget_s=args.budget_s, record=results.add)
    print(f"gpu check: {time.perf_counter() - start:.0f} s in all", flush=True)
    results.table(COLUMNS, [r for r in rows if not r.get("skipped") and not r.get("failed")])
    if any(r.get("failed") for r in rows):
        raise SystemExit(1)


COLUMNS: list[harness.Column] = [
    ("part", "part", str),
    ("wall_s", "connect (s)", harness.fmt(".1f")),
    ("ticks", "ticks", str),
    ("ticks_per_s", "ticks/s", harness.fmt(".3f")),
    ("sgd_iters", "SGD iters", str),
    ("peak_mib", "peak (MiB)", harness.fmt(",.0f")),
    ("peak_label", "peak of", str),
    ("outside_sgd", "outside SGD", harness.fmt(".1%")),
    ("overhead_share", "moves+corr.+writes+ckpt", harness.fmt(".1%")),
]
