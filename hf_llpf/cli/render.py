"""Every text the commands print: tables and summary lines, from what the library returns.

The endpoint and path tables are :mod:`hf_llpf.reporting.report`'s (imported when used: ``hf-llpf --help`` stays
cheap).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The set-up, then the engine's phases per tick in the order a tick runs them (docs/algorithm.md §2.1),
# then the writes.
PROFILE_PHASES = {
    "setup_endpoints": "loading and checking the endpoints",
    "setup_data": "loading the data and the first batch",
    "setup_stages": "building the Follow-Data-Flow stages (forward hooks, torch.export)",
    "snapshot": "copy of the live tensors for the divergence guard's rollback",
    "move": "clamped steps of the active tensors toward θ_B",
    "correct": "variance corrections (after the move and after training)",
    "train": "minimal training (SGD)",
    "record": "per-tick distances to θ_A/θ_B and the tick log",
    "write_points": "saving points (safetensors)",
    "write_metrics": "path_metrics.json/.csv (with each checkpoint and at the end)",
    "write_checkpoint": "resume checkpoint",
    "evaluate": "evaluation of the points (none during the run: points are judged by `hf-llpf evaluate`)",
}

# How the container-owned parameters were placed, by the plan's order source (docs/layer-groups.md).
_PLACED = {
    "hooks": "none (every parameter belongs to a leaf module)",
    "hooks+export graph": "placed at first use in the torch.export graph",
    "hooks+declared": "placed by declared position (torch.export failed)",
}


def trained(label: str, metrics: dict, out: str) -> str:
    """``hf-llpf train``: the endpoint's metrics table and where it was saved."""
    from hf_llpf.reporting.report import endpoint_table

    return f"{endpoint_table({label: metrics})}\nsaved to {out}"


def connected(out: str, path: Any, *, wall: float | None = None, training: tuple[str, dict] | None = None) -> str:
    """``hf-llpf connect``: the one-line summary of the written path; with ``wall`` (the run's seconds) and
    ``training`` (``(label, metrics)`` of an endpoint whose ``metrics.json`` records its training: see
    :func:`endpoint_training`), what the path cost against training that endpoint."""
    run = path.summary.get("run", {})
    line = (
        f"path written to {out} ({run.get('method')}): {len(path)} points, {run.get('ticks')} ticks, "
        f"{run.get('sgd_iters')} SGD iterations, stages started at ticks {run.get('stage_starts')}"
    )
    if "stage_starts" not in run:  # a curve (docs/baselines.md): points at fixed t, no stages
        line = f"path written to {out} ({run.get('method')}): {len(path)} points at fixed t, {run.get('sgd_iters')} "
        line += "SGD iterations"
    if wall is not None and training is not None:
        label, metrics = training
        seconds, iterations = float(metrics["seconds"]), metrics.get("iterations")
        counted = isinstance(iterations, int) and not isinstance(iterations, bool)
        of = f" for {iterations} iterations" if counted else ""
        line += (
            f"; {wall:.1f} s wall time, {wall / seconds:.1f}× the training of endpoint {label} "
            f"({seconds:.1f} s{of}, as its metrics.json records)"
        )
    return line


def endpoint_training(a: str, b: str) -> tuple[str, dict] | None:
    """The training of one endpoint as ``hf-llpf train`` recorded it in the folder's ``metrics.json`` (its
    ``seconds`` and ``iterations``): A's, else B's; None when neither is a local folder recording a positive
    ``seconds`` (a Hub id, a bare weights file, another tool's model: nothing is said)."""
    import json

    for label, spec in (("A", a), ("B", b)):
        file = Path(str(spec)) / "metrics.json"
        try:
            metrics = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        except (OSError, ValueError):  # unreadable: the training time is not known, nothing more
            metrics = None
        seconds = metrics.get("seconds") if isinstance(metrics, dict) else None
        number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        if number and math.isfinite(seconds) and seconds > 0:
            return label, metrics
    return None


def published(out: str, pushed: dict) -> str:
    return f"published {out} as {pushed['url']} (tag {pushed['tag']})"


def profile_table(timing: dict[str, float], *, wall: float, ticks: int) -> str:
    """Where a connect run's time went: the engine's phases, plus ``other`` = wall − their sum (set-up, loading)."""
    phases = {k: float(timing.get(k, 0.0)) for k in PROFILE_PHASES}
    phases.update({k: float(v) for k, v in timing.items() if k not in phases})  # e.g. M2O's phases
    phases["other"] = max(wall - sum(phases.values()), 0.0)
    lines = [f"{'phase':<17} {'seconds':>9} {'share':>7} {'ms/tick':>9}", f"{'-' * 17} {'-' * 9} {'-' * 7} {'-' * 9}"]
    for name, sec in [*phases.items(), ("total", wall)]:
        share = sec / wall if wall > 0 else 0.0
        per_tick = 1000 * sec / ticks if ticks else float("nan")
        lines.append(f"{name:<17} {sec:>9.3f} {share:>7.1%} {per_tick:>9.2f}")
    return "\n".join(lines)


def repeats(summary: dict, *, count: int, out: str) -> str:
    import json

    return (
        f"{json.dumps(summary, indent=2, default=str)}\n"
        f"{count} paths in {out}/repeat_*; consistency.json and plots/repeats.png written"
    )


def groups_notes(plan: Any, *, overridden: bool) -> str:
    """``hf-llpf groups``: the lines under the stage table (placement, never-run modules, tied parameters)."""
    source = plan.order_source.replace("+overrides", "")
    placed = _PLACED.get(source, source)
    return "\n".join(
        [
            f"container-owned parameters: {placed}" + ("; user overrides applied" if overridden else ""),
            f"never-run modules: {', '.join(plan.never_run) or 'none'}",
            f"tied parameters: {', '.join(f'{a} -> {c}' for a, c in plan.tied.items()) or 'none'}",
        ]
    )


def spheres_table(report: list[dict], off: list[bool]) -> str:
    """``hf-llpf spheres``: one row per tensor, the variances, their ratio and ``off`` where the verdict says."""
    header = ("tensor", "Var θ_A", "Var θ_B", "ratio B/A", "")
    rows = [
        (
            r["name"],
            f"{r['var_a']:.6g}",
            f"{r['var_b']:.6g}",
            "-" if r["var_a"] == 0 == r["var_b"] else f"{r['ratio']:.6g}",  # constant in both: no ratio
            "off" if flag else "",
        )
        for r, flag in zip(report, off, strict=True)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, tuple("-" * w for w in widths[:4]) + ("",), *rows]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in lines
    )


def spheres_verdict(v: Any) -> str:
    """``hf-llpf spheres``: the distance line and the verdict sentence, from
    :func:`hf_llpf.algorithms.spheres.sphere_verdict`."""
    verdict = "same variance sphere -> M2M" if v.same else "different variance spheres -> cross-sphere M2O+M2M needed"
    tol = v.tolerance
    return (
        f"numel-weighted mean |ln(Var_B/Var_A)| over weight tensors: {v.distance:.4g}\n"
        f"tolerance: mean |ln(Var_B/Var_A)| <= {tol:g} over weight tensors, weighted by size; biases/norms "
        f"not judged ('off' marks weights with a ratio outside [{math.exp(-tol):.3g}, {math.exp(tol):.3g}]); "
        f"{v.tensors} tensors, {v.outside} outside, {v.skipped} skipped (zero variance in A): {verdict}"
    )


def pushed(info: dict) -> str:
    state = "pushed" if info["created_commit"] else "already up to date"
    other = set(info.get("deleted_other") or [])
    commits = f" ({info['commits']} commits)" if info.get("commits", 0) > 1 else ""
    lines = [f"{state}: {info['url']} @ {info['revision']} commit {info['commit']}{commits} tag {info['tag']}"]
    if info.get("pr_url"):
        lines = [f"{state}: pull request {info['pr_url']} (commit {info['commit']}{commits}; no tag until merged)"]
    if info.get("points") is not None:
        lines.append(f"{info['files']} files, {len(info['points'])} points, license {info.get('license')}")
    if info.get("root"):
        lines.append(f"repo root: point {info['root'][0]}, {info['root'][1]}")
    for rel in info.get("deleted") or []:  # every deletion is named
        lines.append(f"deleted: {rel}" + (" (not published by hf_llpf; allowed)" if rel in other else ""))
    for rel in info.get("replaced_other") or []:
        lines.append(f"replaced: {rel} (not published by hf_llpf; allowed)")
    # A pull request's files live at its own ref until it is merged: the hint loads that ref, not the branch.
    rev = info.get("pr_revision") or info.get("tag")
    spec = info["repo_id"] + (f"@{rev}" if rev else "")
    lines.append(f'load it with: hf_llpf.load_path("{spec}")')
    return "\n".join(lines)


def hub_refused(command: str, err: Exception, *, retry: str) -> str:
    """The error line of a push the Hub refused (the local state unchanged)."""
    return f"hf-llpf {command}: error: the Hub refused the push ({err}); {retry}"


def exported(info: dict) -> str:
    lines = [f"point {info['index']} (tick {info['tick']}, {info['point']}) written to {info['out_dir']}"]
    if info.get("reason"):
        lines.append(f"chosen: {info['reason']}")
    if info.get("repo_id"):
        lines.append(f"pushed to {info['repo_id']} commit {info['commit']}")
    return "\n".join(lines)


def perplexities(result: dict) -> str:
    """A causal LM's figures as perplexities: exp of the mean next-token cross-entropy (the loss columns)."""

    def ppl(rows: list[dict], key: str) -> list[float]:
        return [math.exp(min(r[key], 700.0)) for r in rows if isinstance(r.get(key), (int, float))]

    path, line = ppl(result["points"], "eval_train_loss"), ppl(result["linear"], "eval_train_loss")
    test = ppl(result["points"], "test_loss")
    if not (path and line):
        return "perplexity: no loss figures"
    tested = f"test {min(test):.4g} – {max(test):.4g} on the path" if test else "test not evaluated (no test split)"
    return (
        f"perplexity (exp of the mean next-token cross-entropy): max train {max(path):.4g} on the path, "
        f"{max(line):.4g} on the straight line; {tested}"
    )


def evaluated(result: dict, *, run_dir: str | None, certification: dict | None = None, causal_lm: bool = False) -> str:
    """``hf-llpf evaluate``: counts, the path table, and (for a local run directory) what was written."""
    from hf_llpf.reporting.report import path_verdict, summary_table

    ev = result["summary"]["evaluation"]
    tested = (
        f"{ev['train_examples']} train / {ev['test_examples']} test examples"
        if ev.get("test_examples") is not None
        else f"{ev['train_examples']} train examples (no test split: test figures not evaluated)"
    )
    lines = [
        f"{len(result['points'])} points evaluated on {tested} in {ev['seconds']:.1f} s",
        summary_table(result["summary"]),
    ]
    if causal_lm:
        lines.append(perplexities(result))
    if run_dir is not None:
        lines.append(f"written: {Path(run_dir) / 'path_metrics.json'}, plots/, README.md")
    lines.append(path_verdict(result["summary"], certification))  # the last line: what the figures say
    return "\n".join(lines)


def error(command: str, err: Exception) -> str:
    return f"hf-llpf {command}: error: {err}"


# What to do about a failed file operation, by errno name.
_OS_ADVICE = {
    "ENOSPC": "the disk is full: free space on it",
    "EDQUOT": "the disk quota is used up: free space or raise the quota",
    "EROFS": "the file system is read-only: choose a writable folder",
    "EACCES": "permission denied: check the folder's permissions or choose another",
    "EPERM": "operation not permitted: check the folder's permissions or choose another",
}


def os_error(command: str, err: OSError, *, rerun: str | None) -> str:
    """One paragraph for a failed file operation (a full disk, a read-only folder): the file, what went wrong and
    what to do; ``rerun`` says how to run the command again when plain "the same command" would not do."""
    import errno as errno_names

    name = errno_names.errorcode.get(err.errno or 0, "")
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or str(err)
    advice = _OS_ADVICE.get(name, "fix the cause")
    then = f"then {rerun}" if rerun else "then run the same command again"
    return f"hf-llpf {command}: error: {where}{what}" + (f" ({name})" if name else "") + f"; {advice}, {then}."


def verified(report: dict, tolerance: float) -> str:
    """``hf-llpf verify``'s report: hashes, losses against the record, the guarantee here, the environments."""
    lines, hashes, losses = [], report["hashes"], report["losses"]
    if hashes["differ"]:
        lines += [f"point {d['index']} (tick {d['tick']}): weights differ from the recorded ones (sha256 recorded "
                  f"{str(d['recorded'])[:12]}…, found {str(d['found'])[:12]}…)" for d in hashes["differ"]]  # fmt: skip
    lines.append(f"point hashes: {hashes['checked'] - len(hashes['differ'])} of {hashes['checked']} match the record")
    for d in losses["differ"]:
        lines.append(f"{d['what']} {d['index']} (tick {d['tick']}): loss {d['found']:.6g} here, {d['recorded']:.6g} "
                     f"recorded ({d['relative']:.2e} relative)")  # fmt: skip
    if losses["checked"]:
        lines.append(f"losses: {losses['checked'] - len(losses['differ'])} of {losses['checked']} within "
                     f"{tolerance:g} of the record (largest difference {losses['largest']:.2e} relative)")  # fmt: skip
    else:
        lines.append(f"losses: the run recorded no final check ({report['route']} route); measured here only")
    rec, env = report.get("recorded_environment") or {}, report["environment"]
    lines.append(f"recorded on {_env(rec)}; checked here on {_env(env)}, {report['examples']} training examples"
                 + (f" (recorded {report['recorded_examples']})" if report["recorded_examples"] != report["examples"]
                    else ""))  # fmt: skip
    above = report["above"]
    if above:
        named = "; ".join(f"{a['what']} at tick {a['tick']}: {a['loss']:.4g}" for a in above[:5])
        lines.append(f"verify: the guarantee does NOT hold here: {len(above)} above the ceiling "
                     f"{report['ceiling']:.4g}: {named}")  # fmt: skip
    elif hashes["differ"]:
        lines.append("verify: the guarantee does NOT hold: the points are not the ones the run certified")
    else:
        lines.append(f"verify: the guarantee holds here: every saved point and every segment midpoint has mean "
                     f"training loss <= {report['ceiling']:.4g} (maximum {report['max']:.4g})")  # fmt: skip
    return "\n".join(lines)


def _env(env: dict) -> str:
    if not env:
        return "an unrecorded machine"
    return f"{env.get('device')} {env.get('dtype')} {env.get('threads')} thread(s), torch {env.get('torch')}"
