"""Every architecture family connects: a CPU-scale LLPF run per family, judged against linear interpolation.

    python -m benchmarks families                      # every family, M2M; rewrites the families table
    python -m benchmarks families lenet5 bert          # reruns those, keeps the table's other rows
    python -m benchmarks families --render             # only rewrites the table from the recorded rows
    python -m benchmarks families --threads 2 resnet18 # another rounding: rows recorded, the table left as it is
    python -m benchmarks families --method cross-sphere lenet5   # or m2o: the walk of endpoint A to the origin

Per family: two endpoints of a tiny width (and, where block names allow it, depth) are trained from seeds 0
and 1 — the image families on the built-in 8x8 digits upscaled to 16 px (32 px for VGG11, whose five
max-pools need it; LeNet5 reads the 8x8 images), the language models on a generated token task — then
connected (M2M by default; ``--method cross-sphere``: M2O then M2M; ``--method m2o``: endpoint A walked toward
the origin alone until every moved tensor's variance is 0.8 of its start, no linear baseline) and judged with
:func:`hf_llpf.api.evaluate_run` (eval mode, on every training example the certificate is about: the image
families' 1,437 training images, the language models' 1,024 sequences) and by the run's own final check (every
point and segment midpoint on all of them; the row's ``final_max``). The stages are those of the family's LLPF
recipe (``recipes/<arch>-*-llpf.yaml``: its ``stages`` override, or its hand-set ``schedule`` turned into the same
stages in order), so the run also checks that the recipe's regexes fit the model; only the step and the minimal
training are shrunk for the CPU.

Each family runs in its own process (peak RSS per family). Rows are appended to
``benchmarks/results/families.jsonl``; the table (``benchmarks/results/families.md`` and ``docs/benchmarks.md``
between its ``<!-- families:start -->``/``<!-- families:end -->`` markers) shows the latest M2M row of each family
measured with one thread. ``tests/end_to_end/test_families.py`` runs :func:`run_family` itself and asserts on the row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import hf_llpf
from benchmarks import harness
from hf_llpf.api import evaluate_run
from hf_llpf.config import DataConfig, TrainRecipe, flat_settings
from hf_llpf.data.bundle import DataBundle, load_data
from hf_llpf.run.seeding import seed_everything
from hf_llpf.training.endpoint import train_endpoint

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
RESULTS = harness.RESULTS
SCRATCH = harness.CACHE / "families"  # endpoints are kept in memory; the run directories land here
ENTRY = "families"
METHODS = ("m2m", "cross-sphere", "m2o")

# M2M settings for a CPU, the same for every family: the loss ceiling is the engine's default (auto, from the
# endpoints' losses on the examples the table judges), and so is the certified repair. Only the
# bookkeeping is set: every tick a saved point, so that what is certified (points and the segments between
# consecutive ticks) is what is judged.
CPU_CONNECT = {
    "method": "m2m",
    "arrival_tol": 0.05,
    "batch_size": 64,
    "max_ticks": 400,
    "save_every": 1,
    "checkpoint_every": 1000,
}

# The walk to the origin (``--method m2o``) stops where every moved tensor's variance is this share of its start:
# near enough for a CPU smoke run of every family (the walk's default, 0.25, takes hundreds of ticks there).
CPU_WALK = {"m2o": {"target_variance": 0.8}}


@dataclass
class Family:
    """One architecture family at CPU scale.

    Attributes:
        name: the family's name in the table.
        model: built-in/timm model name, or ``"vit"``/``"bert"``/``"gpt2"`` for transformers models.
        model_args: constructor arguments of the tiny variant.
        image_size: digits upscaled to this size (None: 8x8; unused by the language models).
        recipe: the LLPF recipe whose stages (or schedule) the run uses; None: automatic FDF stages.
        epochs: endpoint training epochs (image families) or passes over the generated task.
        train: extra TrainRecipe fields (optimizer, lr, ...).
        connect: extra connect settings over :data:`CPU_CONNECT`.
    """

    name: str
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = 16
    recipe: str | None = None
    epochs: int = 8
    train: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("lenet5", "lenet5", image_size=None, recipe="lenet5-mnist-llpf.yaml", epochs=10),
        Family("resnet18", "cifar_resnet18", {"width": 8}, recipe="resnet18-cifar10-llpf.yaml"),
        Family("vgg11_bn", "cifar_vgg11_bn", {"width": 8}, image_size=32, recipe="vgg11_bn-cifar10-llpf.yaml"),
        Family(
            "mobilenetv2",
            "cifar_mobilenetv2",
            {"width": 0.25, "dropout": 0.0},
            recipe="mobilenetv2-cifar10-llpf.yaml",
        ),
        Family(
            "shufflenetv2",
            "cifar_shufflenetv2",
            {"width": 0.25, "depth": 0.25},
            recipe="shufflenetv2-cifar10-llpf.yaml",
        ),
        Family(
            "efficientnet_b0",
            "cifar_efficientnet_b0",
            {"width": 0.25, "depth": 0.25, "drop_rate": 0.0},
            recipe="efficientnet_b0-cifar10-llpf.yaml",
        ),
        # RegNetX and DLA: 20 iterations per tick at most, as in the first CPU settings.
        Family(
            "regnetx_200mf",
            "cifar_regnetx_200mf",
            {"width": 0.34, "depth": 0.25},
            recipe="regnetx_200mf-cifar10-llpf.yaml",
            epochs=20,  # after 8 epochs its endpoints' own train loss was 0.57/0.61 (LLPF max 1.12, linear 3.04)
        ),
        Family("dla", "cifar_dla", {"width": 2}, recipe="dla-cifar10-llpf.yaml"),
        Family(
            "cct_7_3x1",
            "cct_7_3x1",
            {"embed_dim": 32, "num_heads": 2, "img_size": 16, "attn_drop_rate": 0.0, "drop_path_rate": 0.0},
            recipe="cct_7_3x1-cifar10-llpf.yaml",
            epochs=20,
            train={"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1},
        ),
        Family("vit", "vit", epochs=20),
        Family("bert", "bert", epochs=30),
        Family("gpt2", "gpt2", epochs=30),
    )
}


# ------------------------------------------------------------------------------------------ stages
def recipe_stages(recipe: str | None) -> dict[str, Any]:
    """The connect settings a family takes from its LLPF recipe: the stage list and ``fdf``.

    A hand-set ``schedule`` becomes the complete stage list in start order (the same stages, joining by
    arrival instead of at the paper's tick counts, which a few dozen CPU ticks cannot reproduce).
    """
    if recipe is None:
        return {}
    values = flat_settings(yaml.safe_load((RECIPES / recipe).read_text()))  # the recipe writes m2m: as a block
    out: dict[str, Any] = {"fdf": values.get("fdf", True)}
    if values.get("stages") is not None:
        out["stages"] = values["stages"]
    elif values.get("schedule"):
        entries = sorted(values["schedule"], key=lambda e: e["start"])
        out["stages"] = {"stages": [[e["match"]] for e in entries]}
    return out


# ------------------------------------------------------------------------------------------ the language tasks
def token_task(kind: str, *, n: int, seed: int, vocab: int = 16, length: int = 8) -> dict[str, torch.Tensor]:
    """A generated token task with a deterministic answer.

    ``bert``: a [CLS]-led sequence of random tokens, label = token 1 mod 4 (4 classes). ``gpt2``: sequences
    following x_{i+1} = (3 x_i + 1) mod vocab from a random start, so every next token is predictable.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "bert":
        ids = torch.randint(2, vocab, (n, length), generator=g)
        ids[:, 0] = 1  # [CLS]
        return {"input_ids": ids, "labels": ids[:, 1] % 4}
    ids = torch.empty(n, length, dtype=torch.long)
    ids[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(1, length):
        ids[:, i] = (3 * ids[:, i - 1] + 1) % vocab
    return {"input_ids": ids, "labels": ids.clone()}


def _batches(columns: dict[str, torch.Tensor], batch_size: int, *, seed: int | None = None) -> list[dict]:
    n = len(next(iter(columns.values())))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else torch.arange(n)
    return [{k: v[order[i : i + batch_size]] for k, v in columns.items()} for i in range(0, n, batch_size)]


def _image_columns(bundle: DataBundle, split: str) -> dict[str, torch.Tensor]:
    loader = bundle.loader(split, batch_size=10**6, seed=0, shuffle=False, augment=False)
    x, y = next(iter(loader))
    return {"pixel_values": x, "labels": y}


def _hf_model(kind: str, seed: int) -> nn.Module:
    import transformers as tf

    seed_everything(seed)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if kind == "vit":
        cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=1, num_labels=10, **small)
        return tf.ViTForImageClassification(cfg)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=16, max_position_embeddings=16, type_vocab_size=1, num_labels=4, **small)
        return tf.BertForSequenceClassification(cfg)
    cfg = tf.GPT2Config(vocab_size=16, n_positions=16, n_embd=32, n_layer=2, n_head=2, use_cache=False)
    return tf.GPT2LMHeadModel(cfg)


def _train_hf(
    model: nn.Module, train: dict[str, torch.Tensor], *, epochs: int, seed: int, lr: float = 3e-3,
    one_cycle: bool = False,
) -> int:  # fmt: skip
    """AdamW on dict batches (the model's own ``outputs.loss``), at a constant ``lr`` or a one-cycle schedule
    peaking at it; returns the iteration count."""
    seed_everything(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * len(_batches(train, 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps) if one_cycle else None
    model.train()
    iters = 0
    for epoch in range(epochs):
        for batch in _batches(train, 64, seed=seed * 1000 + epoch):
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            iters += 1
    return iters


# ------------------------------------------------------------------------------------------ checks
def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stage_coverage(run_dir: Path, model: nn.Module) -> list[str]:
    """Problems with ``layer_groups.json``: parameters in no stage or in more than one (tied aliases excepted)."""
    plan = json.loads((run_dir / "layer_groups.json").read_text())
    listed = [p for s in plan["stages"] for g in s["groups"] for p in g["param_names"]]
    names = [n for n, _ in model.named_parameters(remove_duplicate=False) if n not in plan["tied"]]
    problems = [f"{n} in {listed.count(n)} stages" for n in sorted(set(listed)) if listed.count(n) > 1]
    problems += [f"{n} in no stage" for n in names if n not in listed]
    problems += [f"{n} is not a parameter" for n in listed if n not in names]
    return problems


# ------------------------------------------------------------------------------------------ one family
def method_setting(method: str) -> str:
    """The ``method`` setting that runs ``method`` (``m2m`` or ``cross-sphere``) in the installed hf_llpf.

    Before the methods were renamed, M2O then M2M was registered as ``m2o``; the row and the hashes name the
    method, not the setting, so they stay comparable across the rename.
    """
    if method != "cross-sphere":
        return method
    try:
        from hf_llpf.algorithms.registry import method_names
    except ImportError:  # the registry moved: the new names
        return "cross-sphere"
    names = method_names()
    return "cross-sphere" if "cross-sphere" in names or "m2o-walk" not in names else "m2o"


def run_family(
    name: str, root: Path, *, connect_overrides: dict[str, Any] | None = None, method: str = "m2m"
) -> dict[str, Any]:
    """Train two tiny endpoints, connect them (or walk A to the origin), evaluate; returns the row (never raises).

    Args:
        name: a key of :data:`FAMILIES`.
        root: scratch folder for the run directory (``<name>-path``; ``<name>-<method>-path`` for another method).
        connect_overrides: extra connect settings (e.g. a larger ``step_r`` for a quicker test).
        method: ``m2m``, ``cross-sphere`` (M2O then M2M) or ``m2o`` (endpoint A walked to the origin alone:
            no linear baseline, no endpoint B).

    Returns:
        The row: family, method, params, endpoint figures, ``max_train_loss``/``barrier`` of LLPF and linear,
        ticks, SGD iterations, points, seconds, ``exact_endpoints``, ``stage_problems``, ``run_dir`` and
        ``status`` (``"certified"``, ``"not certified (...)"`` or ``"failed: <why>"``).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    fam = FAMILIES[name]
    row: dict[str, Any] = {"family": name, "method": method, "model": fam.model, "model_args": fam.model_args}
    extra = {**fam.connect, **(connect_overrides or {})}
    row["settings"] = ", ".join(f"{k} {v}" for k, v in extra.items()) or "-"
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        a, b, train_data, eval_data, iters = _endpoints(fam)
        row["params"] = sum(p.numel() for p in a.parameters())
        row["endpoint_iters"] = iters
        row["train_seconds"] = round(time.perf_counter() - start, 1)
        config = {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect, **(connect_overrides or {})}
        run_dir = root / (f"{name}-path" if method == "m2m" else f"{name}-{method}-path")
        row["run_dir"] = str(run_dir)
        if method == "m2o":
            _walk(row, a, train_data, {**config, **CPU_WALK}, run_dir)
        else:
            config["method"] = method_setting(method)
            _connect(row, a, b, train_data, eval_data, config, run_dir)
    except Exception as err:  # a failing family stays in the table with its reason
        row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        row["traceback"] = traceback.format_exc()
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _connect(row: dict, a: nn.Module, b: nn.Module, train_data: Any, eval_data: Any, config: dict, run_dir: Path):
    """Connect ``a`` and ``b``, check the path and judge it against linear interpolation (into ``row``)."""
    t = time.perf_counter()
    # No probe_data: the engine certifies on its training set (every example passed as ``train_data``).
    path = hf_llpf.connect(a, b, train_data, config=config, run_dir=run_dir, exist="overwrite", progress=False)
    row["connect_seconds"] = round(time.perf_counter() - t, 1)
    _run_figures(row, path, config)
    row["exact_endpoints"] = _states_equal(path.model_at(0), a) and _states_equal(path.model_at(-1), b)
    row["stage_problems"] = stage_coverage(run_dir, a)
    t = time.perf_counter()
    # Judged by an evaluation of its own over the whole training split (the saved points; the segments' midpoints
    # are in the run's final check, ``final_max``).
    summary = evaluate_run(path, data=eval_data, train_subset=None, linear_points=11, continuity_k=0, report=False)[
        "summary"
    ]
    row["eval_seconds"] = round(time.perf_counter() - t, 1)
    for which in ("llpf", "linear"):
        row[f"{which}_max_train_loss"] = summary[which]["max_train_loss"]
        row[f"{which}_barrier"] = summary[which]["barrier"]
    row["status"] = _status(row)


def _walk(row: dict, a: nn.Module, train_data: Any, config: dict, run_dir: Path) -> None:
    """Walk ``a`` to the origin (M2O alone) and record the run's figures and certificate (into ``row``)."""
    t = time.perf_counter()
    reference = _copy_state(a)
    path = hf_llpf.walk_to_origin(a, train_data, config=config, run_dir=run_dir, exist="overwrite", progress=False)
    row["connect_seconds"] = round(time.perf_counter() - t, 1)
    _run_figures(row, path, config)
    first = path.model_at(0).state_dict()
    row["exact_endpoints"] = first.keys() == reference.keys() and all(torch.equal(first[k], v) for k, v in
                                                                       reference.items())  # fmt: skip
    row["stage_problems"] = stage_coverage(run_dir, a)
    if not row["exact_endpoints"]:
        row["status"] = "failed: the first point differs from θ_A"
    elif row["stage_problems"]:
        row["status"] = f"failed: stages: {'; '.join(row['stage_problems'][:3])}"
    else:
        row["status"] = "certified" if row["engine_certified"] else "not certified"


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run_figures(row: dict, path: Any, config: dict) -> None:
    """The run's own figures (ticks, SGD iterations, points, stages, certificate) into ``row``."""
    run = path.summary["run"]
    row.update(ticks=run["ticks"], sgd_iters=run["sgd_iters"], points=len(path), stages=run.get("num_stages"))
    row.update(stage_starts=run.get("stage_starts"), max_ticks=config["max_ticks"])
    cert = run["certification"]
    row.update(ceiling=cert["ceiling"], engine_certified=cert["certified"], uncertified=cert["uncertified"])
    final = cert.get("final_check") or {}
    row.update(route=cert.get("route"), n_train=cert.get("probe_examples"), ceiling_rule=cert.get("ceiling_rule"))
    row.update(examples_source=cert.get("examples_source"), examples_run=cert.get("examples_run"))
    # The run's own final check: every saved point and segment midpoint on all N training examples.
    row.update(final_max=final.get("max"), final_points=final.get("points"), final_segments=final.get("segments"))


def _status(row: dict[str, Any]) -> str:
    # The engine counts its final snap onto θ_B as one more tick: more ticks than max_ticks means the run was
    # stopped by max_ticks and jumped to θ_B (a run arriving exactly at max_ticks is also reported here).
    max_ticks = row.get("max_ticks", CPU_CONNECT["max_ticks"])
    if row["ticks"] > max_ticks:
        started = len(row.get("stage_starts") or [0])
        return (
            f"failed: stalled in stage {started}/{row['stages']}, max_ticks={max_ticks} reached; "
            "the last segment is a jump to θ_B"
        )
    if not row["exact_endpoints"]:
        return "failed: first/last point differ from θ_A/θ_B"
    if row["stage_problems"]:
        return f"failed: stages: {'; '.join(row['stage_problems'][:3])}"
    llpf, linear, ceiling = row["llpf_max_train_loss"], row["linear_max_train_loss"], row.get("ceiling")
    if not (math.isfinite(llpf) and llpf <= linear):
        return f"failed: max train loss along LLPF {llpf:.4g} is WORSE than linear interpolation's {linear:.4g}"
    if row.get("final_max") is not None:  # the run's final check adds the segments' midpoints, on all N
        llpf = max(llpf, row["final_max"])
    if ceiling is None or llpf > ceiling or not row.get("engine_certified", False):
        return f"not certified (max {llpf:.4g} > ceiling {ceiling:.4g})" if ceiling else "not certified (no ceiling)"
    return "certified"


def _endpoints(fam: Family) -> tuple[nn.Module, nn.Module, Any, Any, int]:
    """(θ_A, θ_B, training data for connect, evaluation data, iterations to train one endpoint)."""
    if fam.model in ("bert", "gpt2"):
        train_cols = token_task(fam.model, n=1024, seed=10)
        test_cols = token_task(fam.model, n=256, seed=11)
        models = [_hf_model(fam.model, s) for s in (0, 1)]
        iters = [_train_hf(m, train_cols, epochs=fam.epochs, seed=s) for s, m in enumerate(models)][0]
        train = _batches(train_cols, 64, seed=0)
        evaluation = {"train": _batches(train_cols, 256), "test": _batches(test_cols, 256)}
        return models[0].eval(), models[1].eval(), train, evaluation, iters
    bundle = load_data("digits", image_size=fam.image_size) if fam.image_size else load_data("digits")
    if fam.model == "vit":
        train_cols, test_cols = _image_columns(bundle, "train"), _image_columns(bundle, "test")
        models = [_hf_model("vit", s) for s in (0, 1)]
        iters = [_train_hf(m, train_cols, epochs=fam.epochs, seed=s) for s, m in enumerate(models)][0]
        train = _batches(train_cols, 64, seed=0)
        evaluation = {"train": _batches(train_cols, 256), "test": _batches(test_cols, 256)}
        return models[0].eval(), models[1].eval(), train, evaluation, iters
    data_cfg = DataConfig(source="digits", image_size=fam.image_size)
    endpoints = []
    for seed in (0, 1):
        recipe = TrainRecipe(
            model=fam.model, model_args=fam.model_args, data=data_cfg, seed=seed, epochs=fam.epochs, **fam.train
        )
        endpoint, metrics = train_endpoint(recipe, data=bundle, progress=False)
        endpoints.append((endpoint.model, metrics))
    (a, ma), (b, _) = endpoints
    return a, b, bundle, bundle, ma["iterations"]


# ------------------------------------------------------------------------------------------ the table
COLUMNS = (
    ("family", "family", str),
    ("params", "params", lambda v: f"{v:,}"),
    ("route", "route", str),
    ("n_train", "N", lambda v: f"{v:,}"),
    ("ceiling", "ceiling", lambda v: f"{v:.4f}"),
    ("llpf_max_train_loss", "max train loss LLPF", lambda v: f"{v:.4f}"),
    ("final_max", "final check max (points + midpoints, all N)", lambda v: f"{v:.4f}"),
    ("linear_max_train_loss", "max train loss linear", lambda v: f"{v:.4f}"),
    ("llpf_barrier", "barrier LLPF", lambda v: f"{v:.4f}"),
    ("linear_barrier", "barrier linear", lambda v: f"{v:.4f}"),
    ("ticks", "ticks", str),
    ("sgd_iters", "SGD iterations", lambda v: f"{v:,}"),
    ("sgd_vs_probe_engine", "SGD × the probe engine's", lambda v: f"{v:.2f}"),
    ("endpoint_iters", "iterations per endpoint", lambda v: f"{v:,}"),
    ("connect_seconds", "connect s", lambda v: f"{v:.1f}"),
    ("seconds", "wall s (train + connect + eval)", lambda v: f"{v:.1f}"),
    ("settings", "settings beyond the CPU defaults", str),
    ("status", "status", str),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table: one row per family, ``-`` where a failed run has no figure."""
    fmt: dict[str, Callable[[Any], str]] = {k: f for k, _, f in COLUMNS}
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt[k](row[k]) if row.get(k) is not None else "-" for k, _, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


README_MARKS = ("<!-- families:start -->", "<!-- families:end -->")


def table_rows(file: Path) -> list[dict[str, Any]]:
    """The table's rows: per family (in :data:`FAMILIES` order) its latest M2M row measured with one thread.

    A row of the engine that certifies on the training set (it has a ``route``) also gets ``sgd_vs_probe_engine``:
    its SGD iterations over those of the family's latest row from the engine that decided on a fixed 512-example
    probe (rows without a ``route``).
    """
    latest, probe_engine = {}, {}
    for record in harness.read_results(file):
        row = record["row"]
        if record.get("threads", 1) == 1 and row.get("method", "m2m") == "m2m" and row.get("family") in FAMILIES:
            latest[row["family"]] = row
            if row.get("route") is None and row.get("sgd_iters"):
                probe_engine[row["family"]] = row["sgd_iters"]
    rows = [dict(latest[n]) for n in FAMILIES if n in latest]
    for row in rows:
        before = probe_engine.get(row["family"])
        if row.get("route") is not None and before and row.get("sgd_iters") is not None:
            row["sgd_vs_probe_engine"] = row["sgd_iters"] / before
    return rows


def render(results: Path = RESULTS, *, docs: bool = True) -> str:
    """Rewrite ``families.md`` (and the docs' table) from the recorded rows, statuses by the current rules."""
    rows = table_rows(results / f"{ENTRY}.jsonl")
    for row in rows:
        if "llpf_max_train_loss" in row:  # a run that raised keeps its exception as the status
            row["status"] = _status(row)
    table = markdown_table(rows)
    (results / "families.md").write_text(table + "\n")
    if docs:
        harness.write_doc_section(table, README_MARKS)
    return table


def run_family_job(name: str, root: str, method: str = "m2m") -> dict[str, Any]:
    """:func:`run_family` as a measured child's job (the row without the model objects' arguments)."""
    return run_family(name, Path(root), method=method)


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("names", nargs="*", metavar="FAMILY", help=f"default: every family ({', '.join(FAMILIES)})")
    p.add_argument("--method", choices=METHODS, default="m2m")
    p.add_argument("--render", action="store_true", help="only rewrite the table from the recorded rows")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Run the named families (each in its own process), record the rows, rewrite the table."""
    args = parser().parse_args(argv)
    if args.render:
        print(render(args.results, docs=not args.no_docs))
        return 0
    unknown = [n for n in args.names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; available: {', '.join(FAMILIES)}")
    results = harness.Results(ENTRY, args, argv)
    for name in args.names or list(FAMILIES):
        job = {"name": name, "root": str(SCRATCH), "method": args.method}
        row = results.add(harness.measure("benchmarks.families:run_family_job", job, threads=args.threads))
        print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "model_args")}), flush=True)
        if "traceback" in row:
            print(row["traceback"], file=sys.stderr, flush=True)
        # After each family, so that a killed run keeps what it measured.
        if args.threads == 1 and args.method == "m2m" and not args.no_record:
            render(args.results, docs=not args.no_docs)
    print(markdown_table(results.rows))
    return 0
