"""The paper's table at CPU scale: every method on every family's pair under one ceiling, one cached cell at a time.

    python -m benchmarks table                                   # every family x every method (resumes)
    python -m benchmarks table --families lenet5,small_cnn --methods llpf,bezier
    python -m benchmarks table --consistency 5 --families lenet5  # seeds 0..4 of llpf, bezier, autoneb
    python -m benchmarks table --consistency 3 --seeds 7,8,9 --families small_cnn
    python -m benchmarks table --cross-sphere                    # the pair on two variance spheres
    python -m benchmarks table --render                          # only print the table of the recorded cells

A **cell** is one method on one family's pair with one seed: :func:`hf_llpf.comparison.compare` run with that
method alone, judged by the comparison's evaluator on every training example (``train_subset`` none). LLPF, Bézier
and AutoNEB are certified: LLPF by its own run, Bézier and AutoNEB by the comparison's certified route (trained in
rounds until LLPF's certifier accepts the curve, or the cap), under the ceiling of the family's LLPF cell with as
many checked points as it saved (without an LLPF cell: the ceiling by LLPF's rule, 31 points; the row says which).
Linear, SLERP and weight matching are reported as they are; a method that does not apply is a row saying why (the
comparison's refusal text).

The families are the families benchmark's (benchmarks/families.py: the same tiny models, recipes, endpoints and
LLPF settings), plus ``small_cnn`` (the demo's pair: small_cnn on digits, the default TrainRecipe, seeds 0 and 1,
LLPF's default settings) and ``small_cnn-wd`` (``--cross-sphere``: the same architecture trained with weight
decay 5e-4 (seed 0) and 5e-3 (seed 1), two variance spheres, LLPF's cross-sphere method). The language families
(vit, bert, gpt2) are the families benchmark's endpoints trained in memory; the comparison takes their batches as
connect does (``{"train": training batches, "test": held-out batches}``): every method trains on the first, the
evaluator judges both.

**Seeds**: a cell's seed is the methods' own randomness (``seed`` of the connect settings: the SGD batches, the
evaluation's order); the endpoints are fixed (trained once from seeds 0 and 1, from the benchmark cache).

**Cache**: each finished cell is appended at once to ``benchmarks/results/table.jsonl``, keyed by family, method,
seed and a hash of the settings that make it (the connect settings, the certify settings, the evaluation's, the
endpoints' recipes). A re-run skips the cells already there, so the table is built over several sittings and a
killed run loses at most the cell it was running; a cell made with other settings is not reused. Each cell runs in
its own process; the run directories go to ``.bench_cache/table/``.

**Printed**: one line per cell (certified, SGD iterations and seconds to certify, the final check's maximum over
every point and segment midpoint on all training examples, the evaluator's maximum train loss and barrier, and for
LLPF its SGD iterations over one endpoint's and the stage that took the most iterations, with why: its repair
rounds, backtracks and share of the SGD, then what stands out), then the winners per family: the lowest full-set
maximum (the worst of the evaluator's maximum over the points and, for a certified method, the final check's over
points and midpoints; the same examples for every method) and the lowest cost to certify; then LLPF's cost: every
LLPF cell above 3x one endpoint's SGD iterations or above a certified Bézier's or AutoNEB's cost to certify, with
its heaviest stage and the cause. ``--consistency``: per family and method, max-min and standard deviation of the final
check's maximum over the seeds, and ``docs/table-consistency-<family>.png`` (the train loss along every path).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks import harness

ENTRY = "table"
VERSION = 1  # in every cell's key: a change of what a cell measures makes the old cells stale
METHODS = ("llpf", "bezier", "autoneb", "linear", "slerp", "weight-matching")
TRAINED = ("llpf", "bezier", "autoneb")  # certified under the ceiling
CURVES = ("bezier", "autoneb")  # certified under the LLPF cell's ceiling, at as many points
DEMO, CROSS = "small_cnn", "small_cnn-wd"
CROSS_DECAY = (5e-4, 5e-3)  # weight decay of endpoint A and of endpoint B: two variance spheres
LANGUAGE = ("vit", "bert", "gpt2")  # trained on in-memory batches
OVER = 3.0  # an LLPF cell above this many endpoints' iterations names its heaviest stage and the cause
EVAL = {"train_subset": None, "continuity_k": 0}  # every training example, the points themselves


def families() -> tuple[str, ...]:
    """Every family of the table, in order: the demo pair, the families benchmark's, the cross-sphere pair."""
    from benchmarks.families import FAMILIES

    return (DEMO, *FAMILIES, CROSS)


# ------------------------------------------------------------------------------------------ settings and keys
def family_config(family: str) -> dict[str, Any]:
    """LLPF's connect settings of a family (also what Bézier and AutoNEB take: batch size, seed, ceiling rule)."""
    from benchmarks.families import CPU_CONNECT, FAMILIES, recipe_stages

    if family == DEMO:
        return {}
    if family == CROSS:
        return {"method": "cross-sphere"}
    fam = FAMILIES[family]
    return {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect}


def recipes(family: str) -> tuple[Any, Any] | None:
    """The TrainRecipes of a family's two endpoints (None: a language family, trained in memory)."""
    from benchmarks.families import FAMILIES
    from hf_llpf.config import DataConfig, TrainRecipe

    if family == DEMO:
        return TrainRecipe(seed=0), TrainRecipe(seed=1)
    if family == CROSS:
        return tuple(TrainRecipe(seed=s, weight_decay=wd) for s, wd in enumerate(CROSS_DECAY))
    fam = FAMILIES[family]
    if fam.model in LANGUAGE:
        return None
    data = DataConfig(source="digits", image_size=fam.image_size)
    return tuple(
        TrainRecipe(model=fam.model, model_args=fam.model_args, data=data, seed=s, epochs=fam.epochs, **fam.train)
        for s in (0, 1)
    )


def settings(family: str, certify: dict[str, Any]) -> dict[str, Any]:
    """Everything that makes a cell besides its method and seed (hashed into its key)."""
    from benchmarks.families import FAMILIES

    pair = recipes(family)
    # A language family: the families benchmark's endpoints trained in memory (the key once was the family's name
    # alone, for the rows that recorded the comparison's refusal of in-memory batches: those are stale now).
    ends = [harness.recipe_key(r) for r in pair] if pair else {"in_memory": family, "epochs": FAMILIES[family].epochs}
    return {"version": VERSION, "config": family_config(family), "certify": certify, "eval": EVAL, "endpoints": ends}


def settings_hash(values: dict[str, Any]) -> str:
    """A short hash of a cell's settings."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cell_key(family: str, method: str, seed: int, values: dict[str, Any]) -> tuple[str, str, int, str]:
    """The cache key of a cell."""
    return family, method, seed, settings_hash(values)


def row_key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    """The cache key a recorded row was made under."""
    return row["family"], row["method"], row["seed"], row["settings_hash"]


# ------------------------------------------------------------------------------------------ one cell
def heaviest_stage(stages: list[dict] | None, endpoint_iters: int | None,
                   names: list[str] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The stage of an LLPF run that took the most SGD iterations, and why (from ``summary.run.stages``).

    The cause always gives the stage's repair rounds over its ticks (``repair rounds not recorded`` for records of a
    version that did not count them), its backtracks and its share of the run's SGD iterations, then what stands
    out against the run's other stages: long repairs (iterations per tick above 1.5x the run's), or many ticks (most
    of the run's ticks). A run of one stage says so, with its iterations per tick.

    Args:
        stages: the run's ``summary.run.stages``.
        endpoint_iters: the SGD iterations that trained one endpoint (None: no ratio).
        names: each M2M stage's name, by index (:func:`stage_names`; None: indices only).
    """
    stages = [s for s in stages or [] if s.get("ticks")]
    if not stages:
        return None
    top = max(stages, key=lambda s: s.get("sgd_iters") or 0)
    iters, total = top.get("sgd_iters") or 0, sum(s.get("sgd_iters") or 0 for s in stages)
    ticks = sum(s["ticks"] for s in stages)
    per_tick, run_per_tick = iters / top["ticks"], total / ticks
    share = iters / total if total else 0.0
    rounds = (f"{top['repair_rounds']} repair rounds over {top['ticks']} ticks" if "repair_rounds" in top
              else "repair rounds not recorded")  # fmt: skip
    causes = [f"{rounds}, {top.get('backtracks') or 0} backtracks, {share:.0%} of the SGD"]
    if per_tick > 1.5 * run_per_tick:
        causes.append(f"long repairs ({per_tick:.1f} SGD iterations per tick against the run's {run_per_tick:.1f})")
    if len(stages) == 1:
        causes.append(f"the run's only stage ({per_tick:.1f} SGD iterations per tick)")
    elif top["ticks"] > ticks / 2:
        causes.append(f"many ticks ({top['ticks']} of the run's {ticks})")
    label = stage_label(top, names)
    text = f"{label}: {iters} of {total} SGD iterations in {top['ticks']} ticks"  # the share is in the cause
    if endpoint_iters:
        text += f" ({iters / endpoint_iters:.1f}x one endpoint's iterations)"
    return {**top, "share": share, "label": label, "cause": "; ".join(causes), "text": text}


def stage_label(stage: dict[str, Any], names: list[str] | None) -> str:
    """``m2m stage 3 (layer4)``: a stage record's phase, index and, for an M2M stage, its name when known."""
    label = f"{stage.get('phase', 'm2m')} stage {stage['stage']}"
    index = stage["stage"]
    if names and stage.get("phase", "m2m") == "m2m" and 0 <= index < len(names) and names[index]:
        label += f" ({names[index]})"
    return label


def stage_names(run_dir: str | Path) -> list[str] | None:
    """Each stage's name from a run's ``layer_groups.json``: its group's name, or the dotted prefix its groups share
    (``layer4``) where no other stage shares it too, or its first and last groups' (``features.1 … features.3``;
    None: no readable file; ``""``: a stage of no group)."""
    try:
        plan = json.loads((Path(run_dir) / "layer_groups.json").read_text())
        groups = [[g["name"] for g in s["groups"]] for s in plan["stages"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # What a stage's groups share, as layers.png labels a stage (hf_llpf.reporting.layer_plots.tensor_labels).
    shared = [".".join(os.path.commonprefix([n.split(".") for n in names])) if len(names) > 1 else ".".join(names)
              for names in groups]  # fmt: skip
    distinct = [name if name and shared.count(name) == 1 else "" for name in shared]
    return [name or " … ".join(names[:1] + names[-1:]) for name, names in zip(distinct, groups)]


def cell_row(family: str, method: str, seed: int, row: dict[str, Any], endpoint_iters: int | None) -> dict:
    """A table cell from the comparison's row: its figures, the curve along the path and, for LLPF, the stages."""
    from hf_llpf.run import read_metrics

    keep = ("status", "max_train_loss", "barrier", "min_train_acc", "sgd_iters", "seconds", "points", "certified",
            "ceiling", "iters_to_certify", "seconds_to_certify", "full_set_max", "cap", "cap_hit", "stopped", "note",
            "run_dir")  # fmt: skip
    out: dict[str, Any] = {"family": family, "method": method, "seed": seed, "endpoint_iters": endpoint_iters}
    out.update({k: row[k] for k in keep if k in row})
    out["uncertified"] = len(row.get("uncertified") or [])
    if row.get("status") != "ok":
        return out
    metrics = read_metrics(row["run_dir"])
    out["curve"] = [[p.get("position"), p.get("eval_train_loss")] for p in metrics["points"]]
    run = metrics.get("summary", {}).get("run", {})
    if method == "llpf":
        out["stages"] = run.get("stages")
        out["stage_names"] = stage_names(row["run_dir"])
        out["heaviest_stage"] = heaviest_stage(run.get("stages"), endpoint_iters, out["stage_names"])
        cert = run.get("certification") or {}
        out["ceiling_source"] = cert.get("ceiling_rule")
    if endpoint_iters and out.get("sgd_iters"):
        out["x_endpoint"] = out["sgd_iters"] / endpoint_iters
    return out


def compare_cell(a: Any, b: Any, data: Any, method: str, seed: int, values: dict[str, Any], out: Path, *,
                 llpf: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """The comparison's row of ``method`` alone between ``a`` and ``b`` (a refusal: a row saying why).

    ``llpf``: the family's LLPF cell (``ceiling``, ``points``): Bézier and AutoNEB are certified under that ceiling
    and checked at as many points; without it, the ceiling by LLPF's rule and 31 points.
    """
    from hf_llpf.comparison import compare
    from hf_llpf.errors import LLPFError

    config, points = {**values["config"], "seed": seed}, None
    matched = method in CURVES and bool(llpf and llpf.get("ceiling") is not None)
    if matched:
        config["loss_ceiling"], points = llpf["ceiling"], llpf.get("points")
    try:
        table = compare(a, b, data, out_dir=out, methods=[method], config=config, points=points,
                        certify=values["certify"] or None, exist="overwrite", **values["eval"])  # fmt: skip
    except LLPFError as err:  # the comparison refuses the pair: the row says why
        why = "; ".join(getattr(err, "problems", None) or [" ".join(str(err).split())])
        return {"method": method, "status": f"not run: {why}"}
    row = table["rows"][0]
    if method in CURVES:
        row["note"] = "ceiling and points of the LLPF cell" if matched else "no LLPF cell: ceiling by LLPF's rule"
    return row


def _language_pair(family: str) -> tuple[Any, Any, Any, int]:
    """A language family's two endpoints, trained in memory as the families benchmark trains them, the data of its
    cell (``{"train": the batches LLPF trains on, "test": held-out batches}``, as :func:`hf_llpf.connect` takes
    them) and the iterations one endpoint took."""
    from benchmarks.families import FAMILIES, _endpoints

    a, b, train, evaluation, iters = _endpoints(FAMILIES[family])
    return a, b, {"train": train, "test": evaluation["test"]}, iters


def cell_job(family: str, method: str, seed: int, values: dict[str, Any], llpf: dict | None = None) -> dict:
    """One cell, in a measured child process: the endpoints from the benchmark cache, the comparison, the row."""
    from hf_llpf.data.bundle import load_data

    out = harness.scratch(ENTRY, f"{family}-{method}-s{seed}-{settings_hash(values)}")
    pair = recipes(family)
    if pair is None:
        a, b, data, iters = _language_pair(family)
        return cell_row(family, method, seed, compare_cell(a, b, data, method, seed, values, out, llpf=llpf), iters)
    image_size = pair[0].data.image_size
    data = load_data("digits", image_size=image_size) if image_size else load_data("digits")
    a, b, iters = harness.endpoint_pair(*pair, data)
    row = compare_cell(a, b, data, method, seed, values, out, llpf=llpf)
    return cell_row(family, method, seed, row, iters)


# ------------------------------------------------------------------------------------------ the cache
Runner = Callable[[str, str, int, dict, "dict | None"], dict]


def measured_runner(threads: int) -> Runner:
    """Runs each cell in its own measured process (:func:`benchmarks.harness.measure`)."""

    def run(family: str, method: str, seed: int, values: dict, llpf: dict | None) -> dict:
        job = {"family": family, "method": method, "seed": seed, "values": values, "llpf": llpf}
        return harness.measure("benchmarks.table:cell_job", job, threads=threads)

    return run


def recorded(file: Path) -> dict[tuple, dict[str, Any]]:
    """The recorded cells by key (the latest of each), each with the machine it ran on (``_machine``)."""
    return {row_key(r["row"]): {**r["row"], "_machine": r.get("machine")} for r in harness.read_results(file)
            if "settings_hash" in r.get("row", {})}  # fmt: skip


def build(cells: Iterable[tuple[str, str, int]], results: harness.Results, runner: Runner, *,
          certify: dict[str, Any], file: Path | None, until: datetime.datetime | None = None, rerun: bool = False,
          log: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Every cell's row: from ``file`` when recorded under the same key (unless ``rerun``: every cell asked for runs
    again, its new row recorded after the old, which it replaces), else run and recorded at once (none is started at
    or after ``until``).

    Within a family, the LLPF cell (run first when asked) gives Bézier and AutoNEB its ceiling and points.
    """
    done = recorded(file) if file is not None else {}
    rows = []
    for family, method, seed in cells:
        values = settings(family, certify)
        key = cell_key(family, method, seed, values)
        if key in done and not rerun:
            log(f"{family} {method} seed {seed}: recorded, skipped")
            rows.append(done[key])
            continue
        if until is not None and _now() >= until:
            log(f"{family} {method} seed {seed}: not started (--until {until:%H:%M} UTC has passed)")
            continue
        llpf = done.get(cell_key(family, "llpf", seed, values))
        ref = {"ceiling": llpf.get("ceiling"), "points": llpf.get("points")} if llpf and method in CURVES else None
        log(f"{family} {method} seed {seed}: running")
        row = {**runner(family, method, seed, values, ref), "settings_hash": key[3]}
        results.add(row)
        done[key] = row = {**row, "_machine": harness.machine()}
        log(f"  {summary_line(row)}")
        rows.append(row)
    return rows


def summary_line(row: dict[str, Any]) -> str:
    """One cell in one line."""
    if row.get("status") != "ok":
        return f"{row['family']} {row['method']}: {row.get('status')}"
    cert = {True: "certified", False: "not certified", None: "no ceiling"}[row.get("certified")]
    figures = [
        f"max train loss {_f(row.get('max_train_loss'))}",
        f"final check max {_f(row.get('full_set_max'))}",
        f"{row.get('sgd_iters')} SGD iterations",
        f"{_f(row.get('seconds'), 1)} s",
    ]
    return f"{row['family']} {row['method']} seed {row['seed']}: {cert}, " + ", ".join(figures)


# ------------------------------------------------------------------------------------------ the table
def _f(v: Any, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _certified(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "–")
    if row.get("certified") is None:
        return "no ceiling (closed form)"
    if row["certified"]:
        return "yes"
    return "cap hit" if row.get("cap_hit") else "no"


def _heaviest(row: dict) -> dict | None:
    """An LLPF cell's heaviest stage, worked out again from its stage records (a cell recorded before the cause
    named the repair rounds reads as it would now), else as recorded."""
    if row.get("stages"):
        return heaviest_stage(row["stages"], row.get("endpoint_iters"), row.get("stage_names"))
    return row.get("heaviest_stage")


def x_endpoint(row: dict) -> float | None:
    """A cell's SGD iterations over one endpoint's (None: either unknown)."""
    if row.get("x_endpoint") is not None:
        return row["x_endpoint"]
    iters, ends = row.get("sgd_iters"), row.get("endpoint_iters")
    return iters / ends if iters is not None and ends else None


def _stage(row: dict) -> str:
    top = _heaviest(row) if row.get("method") == "llpf" else None
    if not top:
        return "–"
    over = (x_endpoint(row) or 0) > OVER
    return f"{'**above 3x**: ' if over else ''}{top['text']}; cause: {top['cause']}"


def costly(rows: list[dict[str, Any]]) -> list[str]:
    """One line per LLPF cell whose SGD iterations exceed :data:`OVER` times one endpoint's, or whose cost to certify
    exceeds a certified Bézier's or AutoNEB's of its family and seed: by how much, then the stage that took the
    most SGD iterations and the cause (``no stage records in the cell`` when it carries none)."""
    lines = []
    for r in rows:
        why = _over(r, rows) if r.get("method") == "llpf" and r.get("status") == "ok" else []
        if why:
            top = _heaviest(r)
            where = f"{top['label']}: {top['cause']}" if top else "no stage records in the cell"
            lines.append(f"- {r['family']} seed {r['seed']}: {'; '.join(why)}. Heaviest: {where}")
    return lines


def _over(llpf: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What an LLPF cell's cost is above: :data:`OVER` times one endpoint's iterations, a certified curve's."""
    why, ratio, mine = [], x_endpoint(llpf), llpf.get("iters_to_certify")
    if ratio is not None and ratio > OVER:
        why.append(f"{ratio:.1f}x one endpoint's SGD iterations ({llpf['sgd_iters']:,} against "
                   f"{llpf['endpoint_iters']:,})")  # fmt: skip
    for c in rows:
        same = (c.get("family"), c.get("seed")) == (llpf.get("family"), llpf.get("seed"))
        theirs = c.get("iters_to_certify") if same and c.get("method") in CURVES and c.get("certified") else None
        if mine and theirs and mine > theirs:
            why.append(f"more SGD to certify than {c['method']} ({mine:,} against {theirs:,})")
    return why


COLUMNS: list[harness.Column] = [
    ("family", "family", str),
    ("method", "method", str),
    ("seed", "seed", str),
    ("_certified", "certified", str),
    ("iters_to_certify", "SGD iters to certify", lambda v: f"{v:,}"),
    ("seconds_to_certify", "s to certify", lambda v: f"{v:.1f}"),
    ("full_set_max", "final check max (points + midpoints, all N)", harness.fmt(".4f")),
    ("max_train_loss", "max train loss (all N)", harness.fmt(".4f")),
    ("barrier", "barrier", harness.fmt(".4f")),
    ("ceiling", "ceiling", harness.fmt(".4f")),
    ("sgd_iters", "SGD iters", lambda v: f"{v:,}"),
    ("x_endpoint", "x one endpoint", harness.fmt(".1f")),
    ("_stage", "LLPF's heaviest stage", str),
]


def _cost(row: dict[str, Any]) -> tuple[int, float]:
    return row.get("iters_to_certify") or 0, row.get("seconds_to_certify") or 0.0


def full_set_max(row: dict[str, Any]) -> float:
    """The worst train loss measured on every training example along a cell's path: the evaluator's maximum over
    the points and, where the path was certified under a ceiling, the final check's over points and midpoints."""
    return max(v for v in (row.get("max_train_loss"), row.get("full_set_max")) if v is not None)


def winners(rows: list[dict[str, Any]], label: Callable[[dict], str] = lambda r: r["method"]) -> dict[str, str]:
    """A family's winners: the lowest :func:`full_set_max` (the same evaluator and examples for every method) and
    the lowest cost to certify (SGD iterations, then seconds, among the certified cells); ties named together, each
    by ``label`` (its method)."""
    judged = [r for r in rows if r.get("status") == "ok" and r.get("max_train_loss") is not None]
    out = {"max": "–", "cost": "none certified"}
    if judged:
        low = min(map(full_set_max, judged))
        out["max"] = " = ".join(label(r) for r in judged if full_set_max(r) == low) + f" ({low:.5f})"
    certified = [r for r in judged if r.get("certified")]
    if certified:
        cost = min(map(_cost, certified))
        best = [label(r) for r in certified if _cost(r) == cost]
        out["cost"] = " = ".join(best) + f" ({cost[0]:,} SGD iterations, {cost[1]:.1f} s)"
    # A win over the methods that did not run is no win: the line names them.
    missing = [m for m in TRAINED if m not in {r["method"] for r in rows}]
    if missing and judged:
        out = {k: f"{v}; {', '.join(missing)} not run" for k, v in out.items()}
    return out


def render(rows: list[dict[str, Any]]) -> str:
    """The cells' table, per family and seed the winners, then every LLPF cell above :data:`OVER` times one
    endpoint's SGD iterations or a certified curve's cost to certify, with its heaviest stage and the cause
    (:func:`costly`)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["seed"]), []).append(r)
    elsewhere = other_machines(groups)

    def label(r: dict) -> str:
        return r["method"] + (" †" if id(r) in elsewhere else "")

    shown = [{**r, "method": label(r), "_certified": _certified(r), "_stage": _stage(r)} for r in rows]
    text = harness.markdown_table(shown, COLUMNS)
    lines = ["| family | seed | lowest full-set maximum | lowest cost to certify |", "|---|---|---|---|"]
    for (family, seed), group in groups.items():
        won = winners(group, label)
        lines.append(f"| {family} | {seed} | {won['max']} | {won['cost']} |")
    if elsewhere:
        text += "\n\n" + "\n".join(f"† {line}" for line in dict.fromkeys(elsewhere.values()))
    flagged = costly(rows) or [f"- none above {OVER:g}x one endpoint's SGD iterations or a certified curve's cost"]
    text += "\n\nWinners per family:\n\n" + "\n".join(lines)
    return text + "\n\nLLPF's cost (heaviest stage and cause):\n\n" + "\n".join(flagged)


def other_machines(groups: dict[tuple[str, int], list[dict]]) -> dict[int, str]:
    """The cells (by ``id``) that ran on another machine than their family's LLPF cell, each with why that matters.

    The endpoints are trained again on each machine from the same recipes and seeds; a CPU of other vector
    instructions rounds differently, so such a cell compares a pair close to the LLPF cell's, not the same one."""
    out = {}
    for group in groups.values():
        ref = next((r.get("_machine") for r in group if r["method"] == "llpf"), None)
        for r in group:
            if ref is not None and r.get("_machine") not in (None, ref):
                out[id(r)] = (f"ran on {r['_machine']}, the LLPF cell on {ref}: the endpoints were trained on each "
                              f"machine from the same recipes and seeds, and round differently")  # fmt: skip
    return out


def spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and method over its seeds: the final check's maximum's mean, max-min and standard deviation."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("full_set_max") is not None:
            groups.setdefault((r["family"], r["method"]), []).append(r)
    out = []
    for (family, method), group in groups.items():
        values = [r["full_set_max"] for r in group]
        out.append({"family": family, "method": method, "seeds": ",".join(str(r["seed"]) for r in group),
                    "n": len(values), "mean": statistics.fmean(values), "range": max(values) - min(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,
                    "certified": sum(bool(r.get("certified")) for r in group)})  # fmt: skip
    return out


SPREAD_COLUMNS: list[harness.Column] = [
    ("family", "family", str),
    ("method", "method", str),
    ("n", "seeds", str),
    ("certified", "certified", str),
    ("mean", "mean final check max", harness.fmt(".4f")),
    ("range", "max − min", harness.fmt(".4f")),
    ("std", "std", harness.fmt(".4f")),
]


def plot_consistency(rows: list[dict[str, Any]], family: str, png: Path) -> Path:
    """The train loss along every seed's path, one panel per method (the ceiling dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in TRAINED if any(r["method"] == m and r.get("curve") for r in rows)]
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(4.2 * max(len(methods), 1), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for r in (r for r in rows if r["method"] == method and r.get("curve")):
            ax.plot(*zip(*r["curve"]), lw=1, alpha=0.8, label=f"seed {r['seed']}")
            ceiling = r.get("ceiling")
        if ceiling is not None:
            ax.axhline(ceiling, ls="--", color="k", lw=0.8, label="ceiling")
        ax.set_title(f"{family}: {method}", fontsize=10)
        ax.set_xlabel("normalised position along the path")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("train loss (all training examples, eval mode)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# ------------------------------------------------------------------------------------------ the entry
def _names(text: str | None, allowed: Iterable[str], what: str) -> list[str] | None:
    if text is None:
        return None
    names, allowed = [n.strip() for n in text.split(",") if n.strip()], list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"--{what} {unknown[0]!r}: expected some of {', '.join(allowed)}")
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _utc(text: str) -> datetime.datetime:
    try:
        clock = datetime.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM (UTC)") from None
    now = _now()
    until = datetime.datetime.combine(now.date(), clock, datetime.timezone.utc)
    # The next such time: a sitting that runs past midnight names a time of the next day.
    return until if until > now else until + datetime.timedelta(days=1)


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--families", help="comma-separated families (default: every one but the cross-sphere pair)")
    p.add_argument("--methods", help=f"comma-separated methods (default: {','.join(METHODS)})")
    p.add_argument("--seeds", help="comma-separated seeds of the methods' randomness (default: 0)")
    p.add_argument("--consistency", type=int, metavar="N", help="N seeds (0..N-1 unless --seeds) of llpf, bezier, "
                   "autoneb (unless --methods): their spread and the curves' plot")  # fmt: skip
    p.add_argument("--cross-sphere", action="store_true", help=f"the {CROSS} pair (weight decay 5e-4 vs 5e-3)")
    p.add_argument("--round-iters", type=int, help="certify round_iters of Bézier and AutoNEB (default: theirs)")
    p.add_argument("--cap", type=int, help="certify cap of Bézier and AutoNEB (default: theirs)")
    p.add_argument("--until", type=_utc, metavar="HH:MM", help="start no cell at or after this UTC time (next)")
    p.add_argument("--rerun", action="store_true", help="run the cells asked for even where recorded (the new row "
                   "replaces the old: e.g. a family's cells all on this machine)")  # fmt: skip
    p.add_argument("--render", action="store_true", help="run nothing: the table of the recorded cells asked for")
    p.add_argument("--plots", type=Path, default=harness.DOC.parent, help="folder of the consistency plots")
    return harness.common_options(p)


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """The cells asked for, LLPF first within each family and seed."""
    names = _names(args.families, families(), "families") or [f for f in families() if f != CROSS]
    if args.cross_sphere and CROSS not in names:
        names = [*names, CROSS] if args.families else [CROSS]
    default = TRAINED if args.consistency else METHODS
    methods = _names(args.methods, METHODS, "methods") or list(default)
    methods = [m for m in METHODS if m in methods]  # llpf first: it gives the others their ceiling
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.consistency or 1))
    if args.consistency and len(seeds) != args.consistency:
        raise SystemExit(f"--consistency {args.consistency} with {len(seeds)} --seeds: give as many seeds")
    return [(f, m, s) for f in names for s in seeds for m in methods]


def main(argv: list[str], runner: Runner | None = None) -> int:
    """Run (or read) the cells asked for and print the table; ``runner`` replaces the measured process (tests)."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    cells = plan(args)
    certify = {k: v for k, v in (("round_iters", args.round_iters), ("cap", args.cap)) if v is not None}
    file = Path(args.results) / f"{ENTRY}.jsonl"
    results = harness.Results(ENTRY, args, argv)
    if args.render:
        done = recorded(file)
        rows = [done[k] for k in (cell_key(f, m, s, settings(f, certify)) for f, m, s in cells) if k in done]
    else:
        run = runner or measured_runner(args.threads)
        rows = build(cells, results, run, certify=certify, file=file, until=args.until, rerun=args.rerun)
    print(render(rows))
    if args.consistency:
        print("\nConsistency (the final check's maximum over the seeds):\n")
        print(harness.markdown_table(spread(rows), SPREAD_COLUMNS))
        for family in dict.fromkeys(r["family"] for r in rows):
            png = plot_consistency([r for r in rows if r["family"] == family], family,
                                   Path(args.plots) / f"table-consistency-{family}.png")  # fmt: skip
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
