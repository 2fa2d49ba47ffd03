"""Comparing path methods on the same endpoints, data and budget: :func:`compare` (docs/baselines.md).

Every method (LLPF through :func:`hf_llpf.connect`, and the baselines of :mod:`hf_llpf.baselines`) writes its
path as a run directory under ``out_dir/<method>``; every path is then judged by the one evaluator
(:func:`hf_llpf.evaluate_run`) on the same fixed batches, built once here. Those batches are wrapped in a
:class:`ProbeRecorder`, which hashes every complete pass the evaluator makes over them, so each row of the table
carries the digest of the data it was actually judged on. One table (``comparison.md`` / ``comparison.json``)
and one plot (``comparison.png``: every method's loss against normalised position) are written to ``out_dir``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.algorithms.registry import EngineMethod, comparison_methods, path_method
from hf_llpf.baselines.build import CURVE_POINTS
from hf_llpf.comparison_table import (
    PLOT,
    TABLE_JSON,
    TABLE_MD,
    markdown_table,
    plot_comparison,
    table_row,
    write_comparison,
)
from hf_llpf.config import flat_settings
from hf_llpf.errors import ConfigError, NotApplicableError, UnknownNameError
from hf_llpf.evaluation.recorded import ProbeRecorder, probe_digest
from hf_llpf.run.layout import BASELINES_DIR
from hf_llpf.run.lock import holds_run_directory


def _llpf_figures(path: Any) -> dict:
    """What the baselines take from the LLPF path: its SGD iterations, saved points and ceiling."""
    run = path.summary.get("run", {})
    cert = run.get("certification") if isinstance(run.get("certification"), dict) else {}
    return {"sgd_iters": int(run.get("sgd_iters") or 0) or None, "points": len(path), "ceiling": cert.get("ceiling")}


def __getattr__(name: str) -> tuple[str, ...]:
    """``METHODS``: the methods a comparison accepts, in its table's order, read from the registry when asked."""
    if name == "METHODS":
        return comparison_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_methods(methods: Sequence[str] | None) -> list[str]:
    known = comparison_methods()
    methods = list(dict.fromkeys(known if methods is None else methods))
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UnknownNameError("method", unknown[0], known)
    if not methods:
        raise ConfigError(f"methods=[]: give at least one of {', '.join(known)}")
    return methods


def _check_options(
    *, points: int | None, train_subset: int | None, bezier: dict | None, continuity_k: int, certify: Any = None
) -> None:
    """Refuse settings that would fail after the first method has run, every problem at once."""
    from hf_llpf.baselines.build import method_settings
    from hf_llpf.baselines.certify import certify_settings

    problems = []
    if points is not None and (not isinstance(points, int) or points < 2):
        problems.append(f"points={points!r}: must be a whole number of at least 2 (the two ends)")
    if train_subset is not None and train_subset < 1:
        problems.append(f"train_subset={train_subset!r}: must be a positive number of examples or None (all)")
    if continuity_k < 0:
        problems.append(f"continuity_k={continuity_k!r}: must be 0 (no check) or a positive integer")
    for check, settings in ((method_settings, ("bezier", bezier, 0)), (certify_settings, (certify,))):
        try:
            check(*settings)
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)


@dataclass
class _Options:
    """The settings of one comparison every method and the evaluator share (as :func:`compare` takes them)."""

    points: int | None
    bezier: dict | None
    certify: dict | None
    train_subset: int | None
    continuity_k: int
    eval_batch_size: int
    recalibrate_bn: bool
    command: str | None
    progress: bool = False

    def check(self) -> None:
        """Refuse settings that would fail after the first method has run, every problem at once."""
        _check_options(points=self.points, train_subset=self.train_subset, bezier=self.bezier,
                       continuity_k=self.continuity_k, certify=self.certify)  # fmt: skip

    def table_settings(self, methods: list[str], seed: int, data: Any) -> dict:
        """The table's ``settings`` (``data``: the run's ``DataConfig``, as its ``llpf_config.yaml`` records it)."""
        return {"methods": methods, "points": self.points, "train_subset": self.train_subset, "seed": seed,
                "recalibrate_bn": self.recalibrate_bn, "continuity_k": self.continuity_k,
                "data": data.source}  # fmt: skip


class _Judge:
    """The one evaluator of a comparison: fixed batches built once, wrapped in :class:`ProbeRecorder` s, and the
    rows of the table, one per judged path. ``data``: loaded data, or the caller's own splits as
    :func:`~hf_llpf.evaluation.sets.resolve_data` gives them (no test split: the rows have no test figure)."""

    def __init__(
        self,
        data: Any,
        *,
        train_subset: int | None,
        batch_size: int,
        seed: int,
        recalibrate_bn: bool,
        continuity_k: int,
        linear_points: int = 21,
        template: Any = None,
    ):
        import torch

        from hf_llpf.evaluation.sets import sets_for

        self.sets = sets_for(data, train_subset=train_subset, continuity_subset=512, batch_size=batch_size, seed=seed,
                             device=torch.device("cpu"))  # fmt: skip
        self.train = ProbeRecorder(self.sets.train)
        self.test = ProbeRecorder(self.sets.test) if self.sets.test is not None else None
        self.recal, self.template = recalibrate_bn, template
        self.options = {
            "data": {"train": self.train, "test": self.test},
            "recalibrate_bn": recalibrate_bn,
            "continuity_k": continuity_k,
            "linear_points": linear_points,
        }
        self.rows: list[dict] = []

    @classmethod
    def of(cls, data: Any, options: _Options, *, seed: int, **extra: Any) -> _Judge:
        """The evaluator of a comparison under ``options`` (``extra``: ``linear_points``, ``template``)."""
        return cls(data, train_subset=options.train_subset, batch_size=options.eval_batch_size, seed=seed,
                   recalibrate_bn=options.recalibrate_bn, continuity_k=options.continuity_k, **extra)  # fmt: skip

    def judge(self, method: str, path: Any, seconds: float, *, write: bool = True) -> dict:
        """Evaluate ``path`` (written into its run directory unless ``write`` is False) and add its row; returns
        the evaluation."""
        from hf_llpf.api import evaluate_run
        from hf_llpf.evaluation import evaluate_path

        evaluate = evaluate_run if write else evaluate_path
        result = evaluate(path, template=self.template, **self.options)
        probes = {"train": self.train.take(), "test": self.test.take() if self.test is not None else None}
        self.rows.append(table_row(method, result, seconds, path, probes, self.recal))
        return result

    def not_applicable(self, method: str, err: NotApplicableError) -> None:
        """The row of a method that does not apply to the model."""
        self.rows.append({"method": method, "status": f"not applicable: {err.reason}"})

    def table(self, settings: dict) -> dict:
        """The table: the rows, the digest of the probe data, the settings."""
        test = self.sets.test  # None: no test split was given (the table says "not evaluated")
        probe = {
            "train": probe_digest(self.sets.train),
            "test": probe_digest(test) if test is not None else None,
            "train_examples": self.sets.train.num_examples,
            "train_data": self.sets.train.origin,  # how they were chosen (a seeded subset, a whole split, own batches)
            "test_examples": test.num_examples if test is not None else None,
        }
        return {"rows": self.rows, "probe": probe, "settings": settings}


def _baseline(
    method: str,
    model_a: Any,
    model_b: Any,
    bundle: Any,
    run_dir: FsPath,
    *,
    bezier: dict | None,
    llpf: dict | None,
    points: int | None,
    **kw: Any,
) -> Any:
    """One baseline's path. A training baseline (Bézier, AutoNEB) is certified under LLPF's run's ceiling, its path
    checked at as many points as LLPF's run saved (unless ``points`` is given), and trains until certified or its
    cap; without a ceiling its fixed budget (``iters``) is the LLPF path's SGD iterations unless ``bezier`` sets
    Bézier's. ``llpf``: the LLPF path's ``sgd_iters``, ``points`` and ``ceiling`` (``None``: LLPF not run)."""
    from hf_llpf.baselines import build_baseline, with_iters

    entry = path_method(method)
    settings = {"bezier": bezier}.get(method)  # compare's own settings are Bézier's (--bezier-iters, --bezier-lr)
    llpf = llpf or {}
    llpf_iters = llpf.get("sgd_iters")
    if llpf.get("ceiling") is not None:
        llpf_iters = None  # under LLPF's ceiling the trained baselines run until certified: no budget is matched
    fields = getattr(entry.settings, "__dataclass_fields__", {})
    if entry.trains and llpf_iters and "iters" in fields and "iters" not in (settings or {}):
        settings = with_iters(settings, llpf_iters)
    if entry.trains:
        points = points or llpf.get("points") or CURVE_POINTS
        kw["ceiling"] = llpf.get("ceiling")
    return build_baseline(method, model_a, model_b, bundle, run_dir=run_dir, settings=settings,
                          points=points or CURVE_POINTS, **kw)  # fmt: skip


def compare(
    model_a: Any,
    model_b: Any,
    train_data: Any = None,
    *,
    out_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    config: Any = None,
    points: int | None = None,
    bezier: dict | None = None,
    certify: dict | None = None,
    train_subset: int | None = None,
    continuity_k: int = 4,
    eval_batch_size: int = 256,
    recalibrate_bn: bool = False,
    exist: str = "error",
    progress: bool = False,
    command: str | None = None,
    protected: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Run every method between θ_A and θ_B, judge all with the same evaluator on the same data, write the table.

    Args:
        model_a, model_b: endpoint specs, modules or Endpoints, prepared once for every method
            (:func:`hf_llpf.preparation.prepare_inputs`).
        train_data: any form :func:`hf_llpf.connect` takes (:mod:`hf_llpf.data.intake`; ``None``: ``config.data``),
            the evaluation's too: a dataset or batches alone have no test split (the table's test cells say "not
            evaluated"); ``{"train": ..., "test": ...}``: every method trains on ``"train"``.
        out_dir: the comparison's folder: one run directory per method, the table and the plot.
        methods: registered methods a comparison accepts (:func:`~hf_llpf.algorithms.registry.comparison_methods`:
            ``llpf``, ``linear``, ``slerp``, ``bezier``, ``autoneb``, ``weight-matching``, ...); ``None``: all.
        config: :class:`~hf_llpf.config.ConnectConfig` or a dict (LLPF's; its data, batch size and seed are every
            method's).
        points: points of each baseline's path; ``None``: as many as LLPF saved for Bézier and AutoNEB (when ``llpf``
            is compared: their certificate checks those points and each segment's midpoint), else 31.
        bezier: Bézier's settings; without a ceiling ``iters`` defaults to LLPF's SGD iterations, else 500.
        certify: how Bézier and AutoNEB are certified (``round_iters``, ``cap``: docs/baselines.md), under the LLPF
            run's ceiling, or ``config.loss_ceiling`` resolved by LLPF's rule.
        train_subset, continuity_k, eval_batch_size: the evaluation's training examples (``None``: all), interior
            points per segment, batch size.
        recalibrate_bn: also report every path after BatchNorm recalibration (the ``*_recal`` columns); the points
            keep their own (:func:`hf_llpf.build_baseline` ``(recalibrate_bn=True)`` writes recomputed ones).
        exist: ``"error"`` (``out_dir`` new or empty) or ``"overwrite"`` (a comparison folder of this tool holding
            nothing else, emptied first); checked before anything is loaded.
        progress, command: LLPF's progress bar; the command line, recorded.
        protected: other files and folders the caller reads: ``out_dir`` must not be, hold or lie inside one.

    Returns:
        ``{"rows": [...], "probe": {...}, "settings": {...}}``, as written to ``comparison.json``.

    Raises:
        UnknownNameError: an unknown method. ConfigError: invalid settings. RunDirectoryError: ``out_dir`` cannot
            be written under ``exist`` (docs/run-directory.md, "What --overwrite and --resume may do").
    """
    options = _Options(points, bezier, certify, train_subset, continuity_k, eval_batch_size, recalibrate_bn, command,
                       progress)  # fmt: skip
    return _compare(model_a, model_b, train_data, FsPath(out_dir), _check_methods(methods), config, options,
                    exist=exist, protected=protected)  # fmt: skip


def _compare(model_a: Any, model_b: Any, train_data: Any, out: FsPath, methods: list[str], config: Any,
             options: _Options, *, exist: str, protected: Sequence) -> dict[str, Any]:  # fmt: skip
    """:func:`compare` once its methods are checked: the options, the folder (opened before anything is loaded), the
    endpoints and data prepared once, every method into a new folder ``out/<method>``, then the table."""
    from hf_llpf.run import RunWriter, check_out_dir
    from hf_llpf.run.inputs import local_specs, resolve_config

    options.check()
    if exist not in ("error", "overwrite"):
        raise ConfigError(f"exist={exist!r}: expected 'error' or 'overwrite'")
    check_out_dir(out, field="out_dir")  # before the endpoints and data are loaded
    config = resolve_config(config)
    protected = [*protected, *local_specs(model_a, model_b, train_data, config.data.source)]
    with RunWriter(out, exist=exist, protected=protected, kind="comparison"):  # before anything is loaded
        prepared, data, judged = _prepared(model_a, model_b, train_data, config)
        judge = _Judge.of(judged, options, seed=prepared.config.seed)
        llpf = None
        for method in methods:
            start = time.perf_counter()
            try:
                path = _method_path(method, prepared, data, out, llpf=llpf, protected=protected, options=options)
            except NotApplicableError as err:
                judge.not_applicable(method, err)
                continue
            if issubclass(path_method(method), EngineMethod):
                llpf = _llpf_figures(path)
            judge.judge(method, path, time.perf_counter() - start)
        table = judge.table(options.table_settings(methods, prepared.config.seed, prepared.config.data))
        write_comparison(out, table)
    return table


def _prepared(model_a: Any, model_b: Any, data: Any, config: Any) -> tuple[Any, Any, Any]:
    """The endpoints and data of a comparison, prepared once for every method by the one run preparation (loaded,
    checked, the data config applied alike to both), before anything is built.

    ``data`` is any form :func:`hf_llpf.connect` takes (:mod:`hf_llpf.data.intake`). Returns the prepared run, the
    data every method is built on (the loaded bundle, or the caller's data as given) and the data the evaluator
    judges (the bundle, or the caller's splits: a dataset or batches alone have no test split, and the table no test
    figure).
    """
    from hf_llpf.data.intake import read_data
    from hf_llpf.preparation import prepare_inputs

    prepared = prepare_inputs([model_a, model_b], data, config, progress=False)
    if prepared.bundle is not None:
        return prepared, prepared.bundle, prepared.bundle
    given = read_data(data, field="train_data")
    return prepared, data, {"train": given.train, "test": given.test}


def _method_path(method: str, prepared: Any, data: Any, out: FsPath, *, llpf: dict | None, protected: list,
                 options: _Options) -> Any:  # fmt: skip
    """The path of one method of :func:`compare` on ``data``, written to the new folder ``out/<method>``."""
    from hf_llpf.api import connect

    entry, (model_a, model_b), config = path_method(method), prepared.endpoints, prepared.config
    if issubclass(entry, EngineMethod):  # llpf: the settings' method; an engine method: its own name
        config = config if entry.engine is None else config.model_copy(update={"method": entry.name})
        return connect(model_a, model_b, data, config=config, run_dir=out / method,
                       progress=options.progress, command=options.command, protected=protected)  # fmt: skip
    return _baseline(method, model_a, model_b, data, out / method, config=config, points=options.points,
                     bezier=options.bezier, certify=options.certify, llpf=llpf, recalibrate_bn=False,
                     command=options.command)  # fmt: skip


@holds_run_directory("run_dir", exclusive=True, action="evaluate --baselines")
def compare_run(
    run_dir: str | os.PathLike,
    baselines: Sequence[str],
    *,
    data: Any = None,
    points: int | None = None,
    bezier: dict | None = None,
    certify: dict | None = None,
    train_subset: int | None = None,
    continuity_k: int = 4,
    eval_batch_size: int = 256,
    recalibrate_bn: bool = False,
    template: Any = None,
    seed: int = 0,
    linear_points: int = 21,
    command: str | None = None,
) -> dict[str, Any]:
    """Add baselines to an existing LLPF run: what ``hf-llpf evaluate RUN --baselines ...`` does.

    The baselines are built between the run's first and last points (θ_A and θ_B, prepared by the one run
    preparation) on the run's data, written to ``RUN/baselines/<method>`` (replaced when there), and judged with the
    run by one evaluator on the same fixed batches; the run's own evaluation is rewritten with those batches. The
    table and plot go to ``RUN/baselines/comparison.*``. Bézier and AutoNEB are certified under the run's ceiling at
    as many points as the run saved (unless ``points`` is given); without a ceiling Bézier's budget defaults to the
    run's SGD iterations. Everything is checked before anything is written, and the run's own evaluation is written
    last: a comparison that fails leaves the run as it was. The run directory is held for the whole call.

    Args:
        run_dir: the LLPF run directory.
        baselines: compared methods but ``llpf`` (``linear``, ``slerp``, ``bezier``, ``autoneb``, ...).
        data: the data (default: the run's ``llpf_config.yaml`` ``data``); any form :func:`compare` takes.
        template: a module of the architecture, for runs of plain ``nn.Module`` s.
        seed, linear_points: the evaluation's seed (``hf-llpf evaluate --seed``) and its linear line's points.
        points, bezier, certify, train_subset, continuity_k, eval_batch_size, recalibrate_bn, command: as for
            :func:`compare`.

    Returns:
        The table, as written to ``RUN/baselines/comparison.json``.

    Raises:
        RunDirectoryError: not a run directory. ConfigError: no usable data, an unknown method or ``llpf`` asked.
    """
    options = _Options(points, bezier, certify, train_subset, continuity_k, eval_batch_size, recalibrate_bn, command)
    return _add_baselines(run_dir, _check_methods(baselines), data, options, template=template, seed=seed,
                          linear_points=linear_points)  # fmt: skip


def _add_baselines(run_dir: Any, baselines: list[str], data: Any, options: _Options, *, template: Any, seed: int,
                   linear_points: int) -> dict[str, Any]:  # fmt: skip
    """:func:`compare_run` once its methods are checked: the run judged now and written last, each baseline built
    between the run's prepared ends and judged beside it, then the table."""
    from hf_llpf.api import record_evaluation

    options.check()
    engines = [m for m in baselines if issubclass(path_method(m), EngineMethod)]
    if engines:
        raise ConfigError(f"--baselines {engines[0]}: the run itself is the LLPF path; name baselines only")
    path, (prepared, data, judged) = _opened_run(run_dir, baselines, data, template)
    out = path.root / BASELINES_DIR
    judge = _Judge.of(judged, options, seed=seed, linear_points=linear_points, template=template)
    seconds = path.summary.get("run", {}).get("seconds", path.summary.get("run", {}).get("seconds_this_session"))
    own = judge.judge("llpf", path, float(seconds or 0.0), write=False)  # every stretch of a resumed run
    kw = {"config": prepared.config, "points": options.points, "bezier": options.bezier, "certify": options.certify,
          "llpf": _llpf_figures(path), "recalibrate_bn": False, "exist": "overwrite", "command": options.command,
          "inside": path.root}  # fmt: skip
    for method in baselines:
        start = time.perf_counter()
        try:
            baseline = _baseline(method, *prepared.endpoints, data, out / method, **kw)
        except NotApplicableError as err:
            judge.not_applicable(method, err)
            continue
        judge.judge(method, baseline, time.perf_counter() - start)
    table = judge.table({**options.table_settings(["llpf", *baselines], prepared.config.seed, prepared.config.data),
                         "run_dir": str(path.root)})  # fmt: skip
    record_evaluation(path.root, own, template=template)  # judged first, written last: a failure leaves it as it was
    write_comparison(out, table)
    return table


def _opened_run(run_dir: Any, baselines: list[str], data: Any, template: Any) -> tuple[Any, tuple]:
    """The run ``compare_run`` adds baselines to, checked before anything is built: the run directory (whole, no
    link on the way to ``RUN/baselines/<method>``, each of which may be replaced), and its ends and data prepared by
    the one run preparation with the settings the baselines take from the run (``batch_size``, ``seed``)."""
    from hf_llpf.evaluation.sets import resolve_data
    from hf_llpf.models.endpoints import as_endpoint
    from hf_llpf.run import Path
    from hf_llpf.run.inputs import resolve_config
    from hf_llpf.run.ownership import refuse_links_under
    from hf_llpf.run.rundir import check_exist

    path = Path(run_dir, template=template)
    path.validate()
    # Written below: RUN/baselines/<method> and the table beside them; nothing on the way may be a link.
    refuse_links_under(path.root, [BASELINES_DIR, *(f"{BASELINES_DIR}/{m}" for m in baselines)])
    resolved = resolve_data(path, data)  # loaded data, or the caller's own splits (then built on as given)
    # As attributes: llpf_config.yaml writes batch_size in its repair block (settings schema 3), flat before.
    recorded = flat_settings(path.config) if (path.root / "llpf_config.yaml").is_file() else {}
    config = resolve_config({k: recorded[k] for k in ("batch_size", "seed") if k in recorded})
    for method in baselines:  # refused now, not after the first baselines are built
        check_exist(path.root / BASELINES_DIR / method, "overwrite", inside=path.root)
    ends = [as_endpoint(path.model_at(i)) if template is not None else path.endpoint_at(i) for i in (0, -1)]
    return path, _prepared(*ends, data if isinstance(resolved, dict) else resolved, config)


__all__ = [
    "BASELINES_DIR",
    "PLOT",
    "TABLE_JSON",
    "TABLE_MD",
    "ProbeRecorder",
    "compare",
    "compare_run",
    "markdown_table",
    "plot_comparison",
    "probe_digest",
]
