"""``hf-llpf``: the command line. It only parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_llpf import __version__
from hf_llpf.errors import LLPFError


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file of settings")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting (dotted keys for nested)")


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from hf_llpf.config import TrainRecipe, apply_overrides, build, load_recipe
    from hf_llpf.report import endpoint_table
    from hf_llpf.train import train_endpoint

    values = load_recipe(args.recipe)
    if args.model and "=" in args.model:  # no model name given: the first positional was an override
        args.overrides, args.model = [args.model, *args.overrides], None
    if args.model:
        values["model"] = args.model
    if args.data:
        values.setdefault("data", {})["source"] = args.data
    if args.seed is not None:
        values["seed"] = args.seed
    recipe = build(TrainRecipe, apply_overrides(values, args.overrides))
    torch.set_num_threads(args.threads) if args.threads else None
    _, metrics = train_endpoint(recipe, out_dir=args.out, overwrite=args.overwrite)
    print(endpoint_table({f"{recipe.model} seed {recipe.seed}": metrics}))
    print(f"saved to {args.out}")
    return 0


def _cmd_connect(args: argparse.Namespace) -> int:
    import shlex
    import time

    import torch

    from hf_llpf.api import connect
    from hf_llpf.config import ConnectConfig, apply_overrides, build, load_recipe
    from hf_llpf.models import load_endpoint

    values = load_recipe(args.recipe)
    if args.data:
        values.setdefault("data", {})["source"] = args.data
    if args.method:
        values["method"] = args.method
    config = build(ConnectConfig, apply_overrides(values, args.overrides))
    torch.set_num_threads(args.threads)
    exist = "resume" if args.resume else "overwrite" if args.overwrite else "error"
    a = load_endpoint(args.a, arch=args.arch)
    b = load_endpoint(args.b, arch=args.arch)
    command = "hf-llpf " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if sys.argv[1:] else None
    start = time.perf_counter()
    if args.repeats > 1:
        return _connect_repeats(args, a, b, config, exist)
    path = connect(a, b, config=config, run_dir=args.out, exist=exist, progress=not args.no_progress, command=command)
    wall = time.perf_counter() - start
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch / torchrun only the main process reports
        return 0
    evaluate_s = 0.0
    if args.push_to_hub:
        from hf_llpf.api import evaluate_run
        from hf_llpf.hub import push_path

        t = time.perf_counter()
        evaluate_run(path)  # the card's figures and plots
        evaluate_s = time.perf_counter() - t
        pushed = push_path(args.out, repo_id=args.push_to_hub)
        print(f"published {args.out} as {pushed['url']} (tag {pushed['tag']})")
    run = path.summary.get("run", {})
    print(
        f"path written to {args.out} ({run.get('method')}): {len(path)} points, {run.get('ticks')} ticks, "
        f"{run.get('sgd_iters')} SGD iterations, stages started at ticks {run.get('stage_starts')}"
    )
    if args.profile:
        timing = {**run.get("timing", {}), "evaluate": evaluate_s}
        print(_profile_table(timing, wall=wall + evaluate_s, ticks=run.get("ticks") or 0))
    return 0


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


def _profile_table(timing: dict[str, float], *, wall: float, ticks: int) -> str:
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


def _connect_repeats(args: argparse.Namespace, a, b, config, exist: str) -> int:
    import json

    from accelerate import PartialState

    from hf_llpf.repeats import run_repeats

    summary = run_repeats(
        a, b, config=config, run_dir=args.out, repeats=args.repeats, exist=exist, progress=not args.no_progress
    )
    if not PartialState().is_main_process:  # the repeats were spread over the processes; one reports
        return 0
    print(json.dumps(summary, indent=2, default=str))
    print(f"{args.repeats} paths in {args.out}/repeat_*; consistency.json and plots/repeats.png written")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hf_llpf.demo import run_demo

    return run_demo(Path(args.out), threads=args.threads)


def _looks_like_endpoint(spec: str) -> bool:
    """A folder, a file or a Hub id ``org/name[@rev]``; anything else is a built-in/timm model name."""
    return Path(spec).exists() or "/" in spec or spec.endswith(".safetensors")


def _cmd_groups(args: argparse.Namespace) -> int:
    import json

    import torch

    from hf_llpf.errors import ConfigError
    from hf_llpf.models import create_model, load_endpoint
    from hf_llpf.run import check_out_dir
    from hf_llpf.stages import build_stages, format_stage_table, load_overrides

    try:
        model_args = json.loads(args.model_args) if args.model_args else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-args: not valid JSON: {e}") from e
    if not isinstance(model_args, dict):
        raise ConfigError(f"--model-args: expected a JSON object, got {type(model_args).__name__}")
    if args.image_size and not args.data and _looks_like_endpoint(args.model):
        raise ConfigError(
            f"--image-size {args.image_size}: resizes the images of --data, and none was given for the endpoint "
            f"{args.model!r}; pass --data (e.g. --data digits) or drop --image-size"
        )
    if args.json:
        check_out_dir(Path(args.json), field="--json", file=True)
    data = None
    if args.data or not _looks_like_endpoint(args.model):
        from hf_llpf.data import load_data

        options = {"image_size": args.image_size} if args.image_size else {}
        data = load_data(args.data or "digits", **options)
    if _looks_like_endpoint(args.model):
        model = load_endpoint(args.model, model_args=model_args or None).model
    else:
        # fit the stem to the example images (else the forward fails) and, with --data, the head to its classes
        model_args.setdefault("in_chans", data.input_shape[0])
        if args.data:
            model_args.setdefault("num_classes", data.num_classes)
        model = create_model(args.model, **model_args)
    if data is not None:
        batch = next(iter(data.loader("test", batch_size=8, seed=0, shuffle=False, augment=False)))
    elif isinstance(getattr(model, "dummy_inputs", None), dict):
        batch = model.dummy_inputs  # a transformers endpoint without --data: its own dummy inputs
    else:
        from hf_llpf.data import load_data

        batch = next(iter(load_data("digits").loader("test", batch_size=8, seed=0, shuffle=False, augment=False)))
    overrides = load_overrides(args.overrides) if args.overrides else None
    try:
        with torch.no_grad():
            plan = build_stages(model, batch, overrides=overrides)
    except (RuntimeError, AssertionError, ValueError) as e:  # the batch does not fit the model (channels, size)
        if isinstance(e, LLPFError):
            raise
        shape = tuple(batch[0].shape) if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise ConfigError(
            f"the example batch {shape} does not fit {args.model}: {str(e).splitlines()[0]} "
            "(choose --data / --image-size, or --model-args)"
        ) from e
    print(format_stage_table(plan, model))
    source = plan.order_source.replace("+overrides", "")
    placed = {
        "hooks": "none (every parameter belongs to a leaf module)",
        "hooks+export graph": "placed at first use in the torch.export graph",
        "hooks+declared": "placed by declared position (torch.export failed)",
    }.get(source, source)
    print(f"container-owned parameters: {placed}" + ("; user overrides applied" if args.overrides else ""))
    print(f"never-run modules: {', '.join(plan.never_run) or 'none'}")
    print(f"tied parameters: {', '.join(f'{a} -> {c}' for a, c in plan.tied.items()) or 'none'}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _cmd_spheres(args: argparse.Namespace) -> int:
    import math

    from hf_llpf.models import check_endpoints_match, check_finite, load_endpoint
    from hf_llpf.spheres import SPHERE_TOLERANCE, same_sphere, sphere_distance, sphere_report

    ea, eb = load_endpoint(args.a), load_endpoint(args.b)
    check_finite(ea, label="A")
    check_finite(eb, label="B")
    a, b = ea.model, eb.model
    check_endpoints_match(a, b)
    report = sphere_report(a, b)
    tol = SPHERE_TOLERANCE if args.tolerance is None else args.tolerance
    header = ("tensor", "Var θ_A", "Var θ_B", "ratio B/A", "")
    rows = [
        (
            r["name"],
            f"{r['var_a']:.6g}",
            f"{r['var_b']:.6g}",
            "-" if r["var_a"] == 0 == r["var_b"] else f"{r['ratio']:.6g}",  # constant in both: no ratio
            "off" if r["ndim"] > 1 and 0 < r["ratio"] < math.inf and abs(math.log(r["ratio"])) > tol else "",
        )
        for r in report
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths[:4]) + ("",), *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    off = sum(1 for r in rows if r[4])
    skipped = sum(1 for r in report if not 0 < r["ratio"] < math.inf)
    same = same_sphere(report, tol)
    print(f"numel-weighted mean |ln(Var_B/Var_A)| over weight tensors: {sphere_distance(report):.4g}")
    verdict = "same variance sphere -> M2M" if same else "different variance spheres -> cross-sphere M2O+M2M needed"
    print(
        f"tolerance: mean |ln(Var_B/Var_A)| <= {tol:g} over weight tensors, weighted by size; biases/norms "
        f"not judged ('off' marks weights with a ratio outside [{math.exp(-tol):.3g}, {math.exp(tol):.3g}]); "
        f"{len(report)} tensors, {off} outside, {skipped} skipped (zero variance in A): {verdict}"
    )
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from hf_llpf.hub import push_path

    try:
        info = push_path(
            args.run_dir, repo_id=args.repo_id, private=args.private, revision=args.revision, token=args.token
        )
    except HfHubHTTPError as err:  # the local run directory is unchanged: say so, and that a re-run is safe
        print(
            f"hf-llpf push: error: the Hub refused the push ({err}); nothing local changed, re-run to retry",
            file=sys.stderr,
        )
        return 2
    state = "pushed" if info["created_commit"] else "already up to date"
    print(f"{state}: {info['url']} @ {info['revision']} commit {info['commit']} tag {info['tag']}")
    print(f'load it with: hf_llpf.load_path("{info["repo_id"]}@{info["tag"]}")')
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from hf_llpf.hub import export_point

    try:
        info = export_point(
            args.source, point=args.point, out_dir=args.out, push_to_hub=args.push_to_hub, token=args.token
        )
    except HfHubHTTPError as err:
        print(
            f"hf-llpf export: error: the Hub refused the push ({err}); re-run with a new --out to retry",
            file=sys.stderr,
        )
        return 2
    print(f"point {info['index']} (tick {info['tick']}, {info['point']}) written to {info['out_dir']}")
    if info.get("repo_id"):
        print(f"pushed to {info['repo_id']} commit {info['commit']}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from hf_llpf.api import evaluate_run
    from hf_llpf.evaluation import evaluate_path
    from hf_llpf.report import summary_table

    torch.set_num_threads(args.threads)
    source, published = args.run_dir, not Path(args.run_dir).exists() and "/" in args.run_dir
    if published:  # a path published on the Hub (org/repo[@rev]): evaluate it here, write nothing back
        from hf_llpf.hub import load_path

        source = load_path(args.run_dir)
    result = (evaluate_path if published else evaluate_run)(
        source,
        train_subset=args.train_subset,
        batch_size=args.batch_size,
        recalibrate_bn=args.recalibrate_bn,
        linear_points=args.linear_points,
        continuity_k=args.continuity,
        continuity_subset=args.continuity_subset,
        seed=args.seed,
    )
    ev = result["summary"]["evaluation"]
    print(
        f"{len(result['points'])} points evaluated on {ev['train_examples']} train / {ev['test_examples']} test "
        f"examples in {ev['seconds']:.1f} s"
    )
    print(summary_table(result["summary"]))
    if not published:
        print(f"written: {Path(args.run_dir) / 'path_metrics.json'}, plots/, README.md")
    return 0


def _threads(text: str) -> int:
    """``--threads``: a whole number from 1 to the machine's CPU count."""
    limit = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: expected a whole number from 1 to {limit}")
    return value


def _positive(flag: str):
    """An argparse type: a whole number of at least 1, named ``flag`` in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a whole number of at least 1")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-llpf`` (every subcommand is listed in ``--help``)."""
    parser = argparse.ArgumentParser(prog="hf-llpf", description="Low-loss paths between trained checkpoints (LLPF).")
    parser.add_argument("--version", action="version", version=f"hf-llpf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one endpoint (model + data + seed + recipe)")
    p.add_argument("model", nargs="?", help="built-in or timm model name (default: the recipe's, else small_cnn)")
    p.add_argument("--data", help="data spec: 'digits', a Hub dataset id or a local path")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="folder to write the model and metrics.json to")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder of this tool")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads (1 is fastest on small models)")
    _add_settings_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("connect", help="build an LLPF path from endpoint A to endpoint B")
    p.add_argument("a", help="endpoint A: model folder, Hub id org/name[@rev], or .safetensors with --arch")
    p.add_argument("b", help="endpoint B (same architecture as A)")
    p.add_argument("--data", help="training data spec (default: the recipe's, else digits)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--arch", help="model name for bare .safetensors endpoints")
    p.add_argument(
        "--repeats",
        type=_positive("--repeats"),
        default=1,
        metavar="R",
        help="R paths with repair-training seeds seed..seed+R-1 in OUT/repeat_NN, and their consistency",
    )
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="evaluate the path, then publish it as this Hub repo")
    p.add_argument(
        "--method",
        choices=["auto", "m2m", "m2o"],
        help="auto (default): M2M, or M2O+M2M when the endpoints are on different spheres",
    )
    exist = p.add_mutually_exclusive_group()
    exist.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    exist.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--profile", action="store_true", help="print where the time went (per phase and per tick)")
    _add_settings_args(p)
    p.set_defaults(func=_cmd_connect)

    p = sub.add_parser("demo", help="the demo: train two small_cnn endpoints on digits and connect them")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("groups", help="print the Follow-Data-Flow stages of a model (layer groups, order, variance)")
    p.add_argument("model", help="endpoint (folder, .safetensors, Hub id) or built-in/timm model name (random init)")
    p.add_argument("--data", help="data spec for the example batch (default: digits)")
    p.add_argument("--image-size", type=int, help="resize the example images to this square size")
    p.add_argument("--model-args", help="JSON constructor arguments, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--overrides", help="YAML file of stage overrides (list of {match, stage} or {stages: [...]})")
    p.add_argument("--json", metavar="OUT", help="also write the plan as layer_groups.json to OUT")
    p.set_defaults(func=_cmd_groups)

    p = sub.add_parser("spheres", help="compare the per-tensor variances of two endpoints (M2M or cross-sphere)")
    p.add_argument("a", help="endpoint A (folder, Hub id)")
    p.add_argument("b", help="endpoint B (folder, Hub id)")
    p.add_argument("--tolerance", type=float, help="max |ln(Var_B/Var_A)| per tensor (default: SPHERE_TOLERANCE)")
    p.set_defaults(func=_cmd_spheres)

    p = sub.add_parser("push", help="publish a run directory as a Hub model repo (one commit + a run tag)")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("repo_id", help="namespace/name of the model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main; created when missing)")
    p.add_argument("--token", help="write token (default: HF_TOKEN or `hf auth login`); never written to disk")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("export", help="write one point of a path as a standalone (merged) model")
    p.add_argument("source", help="a run directory or a published path org/repo[@revision]")
    p.add_argument("--point", default="mid", help="index, tick:N, best or mid (default mid)")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--push-to-hub", dest="push_to_hub", metavar="REPO", help="also publish it as this model repo")
    p.add_argument("--token", help="write token for --push-to-hub")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("evaluate", help="judge a path: metrics per point, linear baseline, continuity, plots, report")
    p.add_argument("run_dir", help="a run directory, or a published path org/repo[@rev] (evaluated without writing)")
    p.add_argument("--train-subset", type=int, help="fixed seeded subset of N training examples (default: all)")
    p.add_argument("--recalibrate-bn", action="store_true", help="also report figures after BatchNorm recalibration")
    p.add_argument("--linear-points", type=int, default=21, help="points of the linear baseline (default 21)")
    p.add_argument("--continuity", type=int, default=4, metavar="K", help="interior points per segment (0: off)")
    p.add_argument("--continuity-subset", type=int, default=512, help="training examples for continuity")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed subsets")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_evaluate)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-llpf`` console script."""
    parser = build_parser()
    # key=value overrides may stand anywhere, also after options: argparse leaves those in `extra`.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args) or 0
    except LLPFError as err:
        print(f"hf-llpf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
