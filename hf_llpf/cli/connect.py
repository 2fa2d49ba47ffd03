"""``hf-llpf connect``: build an LLPF path from endpoint A to endpoint B (docs/cli.md#connect)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from hf_llpf.cli.args import add_settings_args, positive, threads


def register(sub) -> None:
    p = sub.add_parser("connect", help="build an LLPF path from endpoint A to endpoint B")
    p.add_argument("a", help="endpoint A: model folder, Hub id org/name[@rev], or .safetensors with --arch")
    p.add_argument("b", help="endpoint B (same architecture as A)")
    p.add_argument(
        "--data",
        help="training data spec: Hub id or local file/folder, images or text (default: the recipe's, else digits, "
        "for image models only; docs/data.md)",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--arch", help="model name for bare .safetensors endpoints")
    p.add_argument(
        "--repeats",
        type=positive("--repeats"),
        default=1,
        metavar="R",
        help="R paths with repair-training seeds seed..seed+R-1 in OUT/repeat_NN, and their consistency",
    )
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="evaluate the path, then publish it as this Hub repo")
    p.add_argument(
        "--method",
        help="auto (default): M2M, or M2O then M2M when the endpoints are on different spheres; m2m; cross-sphere "
        "(m2o, the walk to the origin alone, named cross-sphere before settings schema 2); linear; or a curve: "
        "bezier, autoneb (trained, certified in rounds, resumable), slerp, weight-matching (docs/baselines.md); a "
        "curve's own settings as METHOD.KEY=VALUE (bezier.lr=0.05)",
    )
    p.add_argument(
        "--points", type=positive("--points"), help="a curve's points, ends included (default 31; LLPF: refused)"
    )
    p.add_argument(
        "--certify-cap", type=int, help="bezier, autoneb: SGD iterations at most before they stop uncertified"
    )
    p.add_argument("--certify-round", type=int, help="bezier, autoneb: SGD iterations between two checks of the path")
    exist = p.add_mutually_exclusive_group()
    exist.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    exist.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--threads", type=threads, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--profile", action="store_true", help="print where the time went (per phase and per tick)")
    add_settings_args(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    """The run's :class:`~hf_llpf.config.ConnectConfig` from the recipe, ``--data``, ``--method`` and the overrides."""
    from hf_llpf.config import ConnectConfig, build

    return build(ConnectConfig, _values(args))


def _curve_config(args: argparse.Namespace) -> tuple:
    """The run's settings and, for a curve method, its own settings (the ``METHOD.KEY=VALUE`` overrides and the
    recipe's block named after it), its points and its certification rounds (``None`` when not given)."""
    from hf_llpf.algorithms.registry import curve_method
    from hf_llpf.config import ConnectConfig, build
    from hf_llpf.errors import ConfigError

    values = _values(args)
    curve = curve_method(values.get("method", ""))
    own = values.pop(curve.name, None) if curve is not None and curve.settings is not None else None
    certify = {k: v for k, v in (("cap", args.certify_cap), ("round_iters", args.certify_round)) if v is not None}
    if curve is not None and args.repeats > 1:
        raise ConfigError(f"--repeats {args.repeats}: repeats are of LLPF's repair seeds; {curve.name} has none")
    if curve is None and (args.points is not None or certify):
        given = "--points" if args.points is not None else "--certify-cap/--certify-round"
        raise ConfigError(f"{given}: a curve method's setting (--method bezier, autoneb, slerp, weight-matching)")
    return build(ConnectConfig, values), own, args.points, certify or None


def _values(args: argparse.Namespace) -> dict:
    """The settings as given (the recipe, upgraded; ``--data``; ``--method``; the overrides), not yet checked."""
    from hf_llpf.config import grouped_key, upgrade_settings
    from hf_llpf.recipes import apply_overrides, load_recipe

    values = load_recipe(args.recipe)
    if args.recipe is not None:  # a recipe of an older schema: flat keys, or the methods' names of schema 1
        values, notice = upgrade_settings(values, where=f"recipe {args.recipe}")
        if notice is not None:
            logging.getLogger("hf_llpf").warning(notice)
    if args.data:
        values.setdefault("data", {})["source"] = args.data
    if args.method:
        values["method"] = args.method
    # A bare key on the command line (step_r=0.3) is the setting of its block, as the recipe now writes it.
    return apply_overrides(values, args.overrides, where=grouped_key)


def read_by_command(args: argparse.Namespace, config) -> list:
    """The local files and folders the command reads (the endpoints, the data, the recipe): never written."""
    from hf_llpf.run.inputs import local_specs

    return local_specs(args.a, args.b, config.data.source, args.recipe)


def _command_line() -> str | None:
    """The command as typed, recorded in the run directory."""
    import shlex

    return "hf-llpf " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if sys.argv[1:] else None


def run(args: argparse.Namespace) -> int:
    import time

    from hf_llpf.api import connect
    from hf_llpf.cli.args import set_threads
    from hf_llpf.run.rundir import check_exist

    config, own, points, certify = _curve_config(args)
    set_threads(args.threads)
    exist = "resume" if args.resume else "overwrite" if args.overwrite else "error"
    protected = read_by_command(args, config)
    # Before the endpoints load (connect checks again before it writes; a resume's checks need the settings as
    # the run records them, and come first in connect).
    if args.repeats == 1 and exist != "resume":
        check_exist(args.out, exist, protected=protected)
    a, b = _endpoints(args, config)
    command = _command_line()
    start = time.perf_counter()
    if args.repeats > 1:
        return _repeats(args, a, b, config, exist, protected)
    curve = {"settings": own, "points": points, "certify": certify} if (own, points, certify) != (None,) * 3 else {}
    path = connect(a, b, config=config, run_dir=args.out, exist=exist, progress=not args.no_progress, command=command,
                   protected=protected, **curve)  # fmt: skip
    wall = time.perf_counter() - start
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch / torchrun only the main process reports
        return 0
    _report(args, path, wall)
    return 0


def _endpoints(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """The endpoints as connect takes them: loaded here (a bad one named before any work), except in a sharded run
    (``devices.sharding=fsdp``, or ``accelerate launch --use_fsdp``) of two folders or Hub ids, which connect reads by
    rows itself: each process reads only its rows of every tensor, never a whole endpoint."""
    from hf_llpf.devices.accelerator import launched_sharding
    from hf_llpf.models.endpoints import load_endpoint
    from hf_llpf.sharding.rows import reads_by_rows

    sharded = launched_sharding(config).sharding == "fsdp" and args.repeats == 1
    if sharded and args.arch is None and reads_by_rows([args.a, args.b]):
        return args.a, args.b
    return load_endpoint(args.a, arch=args.arch), load_endpoint(args.b, arch=args.arch)


def _report(args: argparse.Namespace, path, wall: float) -> None:
    """On the main process: publish when asked (after evaluating, for the card), then the summary and profile."""
    import time

    from hf_llpf.cli.render import connected, endpoint_training, profile_table, published

    evaluate_s, verdict = 0.0, None
    if args.push_to_hub:
        from hf_llpf.api import evaluate_run
        from hf_llpf.hub import push_path
        from hf_llpf.reporting.report import path_verdict

        t = time.perf_counter()
        cert = path.summary.get("run", {}).get("certification")
        verdict = path_verdict(evaluate_run(path)["summary"], cert)  # the card's figures and plots
        evaluate_s = time.perf_counter() - t
        print(published(args.out, push_path(args.out, repo_id=args.push_to_hub)))
    print(connected(args.out, path, wall=wall, training=endpoint_training(args.a, args.b)))
    if args.profile:
        run = path.summary.get("run", {})
        timing = {**run.get("timing", {}), "evaluate": evaluate_s}
        print(profile_table(timing, wall=wall + evaluate_s, ticks=run.get("ticks") or 0))
    # The last line says what the figures say; without an evaluation only the certification is known.
    if verdict is None:
        from hf_llpf.algorithms.certify import certification_line

        cert = certification_line(path.summary.get("run", {}).get("certification"))
        verdict = f"{cert}; not compared yet: `hf-llpf evaluate {args.out}` judges it against linear interpolation"
    print(verdict)


def _repeats(args: argparse.Namespace, a, b, config, exist: str, protected: list) -> int:
    from accelerate import PartialState

    from hf_llpf.cli.render import repeats
    from hf_llpf.repeats import run_repeats

    summary = run_repeats(
        a,
        b,
        config=config,
        run_dir=args.out,
        repeats=args.repeats,
        exist=exist,
        progress=not args.no_progress,
        protected=protected,
    )
    if not PartialState().is_main_process:  # the repeats were spread over the processes; one reports
        return 0
    print(repeats(summary, count=args.repeats, out=args.out))
    return 0
