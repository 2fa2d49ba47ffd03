"""What storing points in bf16/fp16 saves, and what it changes in the path's judged maximum loss.

``python -m benchmarks speed storage [FAMILY ...]`` (default: lenet5, efficientnet_b0, bert, about 10 minutes on 2
CPU cores, one torch thread; the committed results name ``lenet5 resnet18 efficientnet_b0 bert`` and took 12.5
minutes; ``--no-bf16-run`` leaves out the bf16 run). Prints a table, appends the rows to
``benchmarks/results/speed.jsonl`` and rewrites the table in ``docs/benchmarks.md`` (between
``<!-- storage:start -->``/``<!-- storage:end -->``; ``--no-docs`` leaves it).

Method (the cheapest honest one): per family, the endpoints and one float32 path are built exactly as in
:mod:`benchmarks.families` (``point_dtype: auto``) and evaluated (eval mode, the fixed 512 training examples,
linear baseline at 11 points, no continuity check). The path's run directory is then copied with every point's
floating tensors rounded to bf16 and to fp16 (integer buffers untouched), and each copy is evaluated with the
same settings: the change in max train loss is what rounding the stored points does to the judged figure. A run
with ``point_dtype: bf16`` differs only in that its working model is rounded at every tick (the next tick starts
from the stored point) and that its certification probes the rounded points; one such run (lenet5) is reported
below the table. Bytes are those of the points' files (weights, config, index) as written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import hf_llpf
from benchmarks import harness
from benchmarks.families import CPU_CONNECT, FAMILIES, _endpoints, recipe_stages
from hf_llpf.api import evaluate_run
from hf_llpf.models.weights import cast_floating
from hf_llpf.run import RunPath

SCRATCH = harness.CACHE / "storage"
DEFAULT = ("lenet5", "efficientnet_b0", "bert")
OPTIONS = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16}
EVAL = {"train_subset": 512, "linear_points": 11, "continuity_k": 0, "report": False}
MARKS = ("<!-- storage:start -->", "<!-- storage:end -->")
# Points of a 100M-parameter model's path, extrapolated from the stage counts of this project's paths (not measured).
BIG_PARAMS, BIG_POINTS = 100_000_000, (410, 555)
BYTES_PER_VALUE = {"auto": 4, "bf16": 2, "fp16": 2}


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def rounded_copy(run_dir: Path, dest: Path, dtype: torch.dtype) -> None:
    """``run_dir`` copied to ``dest`` with every point's floating tensors rounded to ``dtype`` (files rewritten)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint", ".hf_llpf-lock"))
    for f in sorted((dest / "points").rglob("*.safetensors")):
        state = safetensors.torch.load_file(str(f))
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in cast_floating(state, dtype).items()}, str(f), {"format": "pt"}
        )


def _judged(run_dir: Path, eval_data: Any) -> tuple[float, list[float]]:
    """The evaluated max train loss and every point's train loss."""
    result = evaluate_run(RunPath(run_dir), data=eval_data, **EVAL)
    return result["summary"]["llpf"]["max_train_loss"], [p["eval_train_loss"] for p in result["points"]]


def measure(name: str) -> dict[str, Any]:
    """One family's row: parameters, points, bytes per point and per path, and the judged change per option."""
    fam = FAMILIES[name]
    start = time.perf_counter()
    torch.manual_seed(0)
    a, b, train_data, eval_data, _ = _endpoints(fam)
    config = {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect}
    run_dir = SCRATCH / f"{name}-fp32"
    probe = eval_data["train"] if isinstance(eval_data, dict) else None
    path = hf_llpf.connect(a, b, train_data, config=config, run_dir=run_dir, exist="overwrite", progress=False,
                           probe_data=probe)  # fmt: skip
    row: dict[str, Any] = {"family": name, "params": sum(p.numel() for p in a.parameters()), "points": len(path)}
    base, base_points = _judged(run_dir, eval_data)
    for option, dtype in OPTIONS.items():
        folder = run_dir if dtype is None else SCRATCH / f"{name}-{option}"
        if dtype is not None:
            rounded_copy(run_dir, folder, dtype)
        sizes = [folder_bytes(RunPath(folder).point_dir(i)) for i in range(len(path))]
        row[f"{option}_point_bytes"] = round(sum(sizes) / len(sizes))
        row[f"{option}_path_bytes"] = sum(sizes)
        if dtype is not None:
            top, points = _judged(folder, eval_data)
            row[f"{option}_max_loss"] = top
            row[f"{option}_max_loss_change"] = top - base
            row[f"{option}_worst_point_change"] = max(abs(x - y) for x, y in zip(points, base_points, strict=True))
    row["auto_max_loss"] = base
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def bf16_run(name: str = "lenet5") -> dict[str, Any]:
    """A real ``point_dtype: bf16`` run of ``name`` next to its float32 run: certification and judged max loss."""
    fam = FAMILIES[name]
    torch.manual_seed(0)
    a, b, train_data, eval_data, _ = _endpoints(fam)
    config = {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect, "point_dtype": "bf16"}
    run_dir = SCRATCH / f"{name}-bf16-run"
    path = hf_llpf.connect(a, b, train_data, config=config, run_dir=run_dir, exist="overwrite", progress=False)
    top, _ = _judged(run_dir, eval_data)
    run = path.summary["run"]
    return {"family": name, "points": len(path), "certified": run["certification"]["certified"],
            "ceiling": run["certification"]["ceiling"], "max_loss": top, "point_dtype": run["point_dtype"],
            "path_bytes": sum(folder_bytes(path.point_dir(i)) for i in range(len(path)))}  # fmt: skip


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: bytes per point and per path per option, and the change in the judged max loss."""
    columns = (
        "family | params | points | bytes/point auto (fp32) | bf16 | fp16 | bytes/path auto (fp32) | bf16 | fp16 | "
        "max train loss fp32 | Δ max loss bf16 | Δ max loss fp16 | worst point Δ bf16 | worst point Δ fp16"
    )
    lines = [f"| {columns} |", "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['params']:,} | {r['points']} | "
            + " | ".join(f"{r[f'{o}_point_bytes']:,}" for o in OPTIONS)
            + " | "
            + " | ".join(_mb(r[f"{o}_path_bytes"]) for o in OPTIONS)
            + f" | {r['auto_max_loss']:.4f} | {r['bf16_max_loss_change']:+.5f} | {r['fp16_max_loss_change']:+.5f}"
            f" | {r['bf16_worst_point_change']:.5f} | {r['fp16_worst_point_change']:.5f} |"
        )
    return "\n".join(lines)


def extrapolation() -> str:
    """Bytes of a 100M-parameter model's points and paths: parameters × bytes per value × points (no header)."""
    lo, hi = BIG_POINTS
    lines = ["| 100M parameters (extrapolated) | bytes/point | bytes/path, 410 points | bytes/path, 555 points |",
             "|---|---|---|---|"]  # fmt: skip
    for option, width in BYTES_PER_VALUE.items():
        point = BIG_PARAMS * width
        lines.append(f"| {option} | {_mb(point)} | {_mb(point * lo)} | {_mb(point * hi)} |")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], run: dict[str, Any] | None) -> str:
    """Everything the benchmark prints (and writes into the docs)."""
    parts = [
        "Rounding one float32 path's stored points (method: see benchmarks/speed/storage.py); Δ = rounded − float32, "
        "judged on the same 512 training examples in eval mode.",
        "",
        table(rows),
        "",
        "Extrapolation, not a measurement: parameters × 4 (fp32) or 2 (bf16/fp16) bytes × 410–555 points, the "
        "path length extrapolated from the stage counts of this project's paths for a 100M-parameter model (no such "
        "path was run; a point's safetensors header and config add about 1 kB).",
        "",
        extrapolation(),
    ]
    if run:
        parts += [
            "",
            f"A run with `point_dtype: bf16` ({run['family']}): {run['points']} points stored in "
            f"{run['point_dtype']}, {_mb(run['path_bytes'])} in all; certified: {run['certified']} "
            f"(ceiling {run['ceiling']:.4f}); "
            f"judged max train loss of the stored points {run['max_loss']:.4f}.",
        ]
    return "\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options."""
    parser.add_argument("names", nargs="*", metavar="FAMILY", help=f"default: {' '.join(DEFAULT)}")
    parser.add_argument("--no-bf16-run", action="store_true", help="leave out the point_dtype: bf16 run (lenet5)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")


def run(args: argparse.Namespace, results: harness.Results) -> None:
    """Measure every named family (and the bf16 run); print, record and put the table in the docs."""
    names = args.names or list(DEFAULT)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; available: {', '.join(FAMILIES)}")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        rows.append(results.add({"part": "storage", **measure(name)}))
        print(json.dumps(rows[-1]), flush=True)
    bf16 = None if args.no_bf16_run else results.add({"part": "storage", "kind": "bf16 run", **bf16_run()})
    text = report(rows, bf16)
    print(text)
    if not args.no_docs:
        harness.write_doc_section(text, MARKS)
