"""Validated settings: data specs, endpoint-training recipes and path-finding (connect) settings.

Every settings object is a pydantic model that forbids unknown keys, so a typo in a recipe or a
``key=value`` override is an error that lists the valid keys instead of being silently ignored.
All problems in one input are reported together (:class:`~hf_llpf.errors.ConfigError`).
Reading them from YAML recipes and ``key=value`` overrides is :mod:`hf_llpf.recipes`.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hf_llpf.errors import ConfigError
from hf_llpf.stages.matching import compile_regex
from hf_llpf.stages.overrides import ExplicitStages, MoveOverride, parse_overrides

# The settings' schema: 2 renamed the methods (m2o → cross-sphere, m2o-walk → m2o), 3 wrote them in blocks.
SCHEMA = 3
# Method names of schema 1, as schema 2 names them (recipes, llpf_config.yaml and checkpoints without a schema).
SCHEMA_1_METHODS = {"m2o": "cross-sphere", "m2o-walk": "m2o"}
WALK_IS_NOT_A_CONNECTION = (
    "method='m2o': m2o is the walk of one endpoint to the origin (hf_llpf.walk_to_origin); it does not connect two "
    "endpoints. M2O then M2M, which 'm2o' named before settings schema 2, is method='cross-sphere'"
)
# Where a user writes each ConnectConfig setting (recipes, llpf_config.yaml, key=value, the config= dict), from
# schema 3 on: block → {key in the block: ConnectConfig attribute}. The engine reads the flat attributes; only the
# text a user writes and reads is grouped (docs/cli.md#settings-schema). m2o and data are nested models already.
BLOCKS: dict[str, dict[str, str]] = {
    "m2m": {k: k for k in ("step_a", "step_f", "step_r", "arrival_tol", "fdf", "schedule", "stages", "max_ticks")},
    "repair": {
        **{k: k for k in ("lr", "momentum", "weight_decay", "batch_size", "bn_momentum", "min_iters")},
        **{"budget": "repair_budget", "headroom": "repair_headroom", "max_iters": "max_iters"},
        "loss_threshold": "loss_threshold",
    },
    "certify": {
        **{k: k for k in ("loss_ceiling", "ceiling_margin", "probe_size", "max_backtracks")},
        **{k: f"certify_{k}" for k in ("segments", "exact_max", "delta", "clip")},
    },
    "storage": {k: k for k in ("save_every", "checkpoint_every", "point_dtype", "max_shard_size", "keep_auto_map")},
    "devices": {k: k for k in ("mixed_precision", "sharding", "sync_check_every")},
    "guard": {k: k for k in ("loss_limit", "max_failures")},
}
# Outside the blocks: what the run is, and the nested models. The order in which llpf_config.yaml writes them.
WRITTEN_ORDER = ("method", "schema_version", "seed", "m2m", "m2o", "repair", "certify", "storage", "devices",
                 "guard", "report_to", "data")  # fmt: skip
# A ConnectConfig attribute → the name a user writes (``lr`` → ``repair.lr``); attributes outside BLOCKS keep theirs.
GROUPED = {attr: f"{block}.{key}" for block, keys in BLOCKS.items() for key, attr in keys.items()}


def setting_name(attr: str) -> str:
    """The name a user writes for a :class:`ConnectConfig` attribute (``repair_budget`` → ``repair.budget``); a
    dotted name (``m2o.step_a``) or one outside the blocks is returned as it is."""
    head, dot, rest = attr.partition(".")
    return GROUPED.get(head, head) + dot + rest


def flat_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Grouped settings (``{"repair": {"lr": 0.01}}``) as :class:`ConnectConfig`'s flat attributes
    (``{"lr": 0.01}``); bare flat keys are kept. A key a block does not hold stays, dotted (``repair.lrr``), for
    the settings' check to report with the block's keys.

    Raises:
        ConfigError: a block is not a mapping, or one setting is given both in its block and bare.
    """
    flat = {k: v for k, v in values.items() if k not in BLOCKS}
    problems = []
    for block in (b for b in BLOCKS if b in values):
        given = values[block] if values[block] is not None else {}
        if not isinstance(given, dict):
            problems.append(f"{block}={given!r}: a block of settings, a mapping of {', '.join(BLOCKS[block])}")
            continue
        for key, value in given.items():
            attr = BLOCKS[block].get(str(key), f"{block}.{key}")
            if attr in flat:
                problems.append(f"{block}.{key} and {attr}: one setting given twice; write {block}.{key} only")
            flat[attr] = value
    if problems:
        raise ConfigError(problems)
    return flat


def grouped_settings(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Settings with every bare flat key (``lr``) moved into its block (``repair: {lr: …}``); returns them and the
    keys moved. A key already in its block is not replaced (the settings' check reports the pair)."""
    out = {k: (dict(v) if k in BLOCKS and isinstance(v, dict) else v) for k, v in values.items()}
    moved = []
    for attr in [k for k in values if k in GROUPED]:
        block, key = GROUPED[attr].split(".")
        target = out.setdefault(block, {})
        if isinstance(target, dict) and key not in target:
            target[key] = out.pop(attr)
            moved.append(attr)
    return out, moved


def grouped_key(key: str) -> str:
    """A dotted ``key=value`` key with a bare flat key written in its block (``step_r`` → ``m2m.step_r``)."""
    head, dot, rest = key.partition(".")
    return f"{GROUPED[head]}{dot}{rest}" if head in GROUPED else key


def upgrade_settings(values: dict[str, Any], *, where: str) -> tuple[dict[str, Any], str | None]:
    """Settings read from a file (a recipe, a run directory's ``llpf_config.yaml``), in today's schema.

    A file without ``schema_version`` was written under schema 1: its ``method: m2o`` meant M2O then M2M, named
    ``cross-sphere`` now. Before schema 3 the settings were flat (``lr`` for ``repair.lr``): bare keys are moved
    into their blocks. Returns the settings with ``schema_version`` set to today's, and a one-line notice when
    anything was translated (``None`` otherwise). A schema newer than this hf_llpf's is left to the settings'
    check, which refuses it.
    """
    if not isinstance(values, dict):
        return values, None
    written = values.get("schema_version")
    readable = isinstance(written, int) and not isinstance(written, bool) and 0 < written <= SCHEMA
    if written is not None and not readable:
        return values, None  # not a schema this hf_llpf reads: the settings' check says so
    said = []
    values, moved = grouped_settings({**values, "schema_version": SCHEMA})
    old = values.get("method")
    if written is None and isinstance(old, str) and old in SCHEMA_1_METHODS:
        values["method"] = SCHEMA_1_METHODS[old]
        said.append(f"its method {old!r} is read as {values['method']!r}, that method's name now")
    if moved:
        shown = ", ".join(f"{k} → {GROUPED[k]}" for k in moved[:3]) + (f", … ({len(moved)} in all)" * (len(moved) > 3))
        said.append(f"its flat keys are read into the blocks of settings schema {SCHEMA} ({shown})")
    if not said:
        return values, None
    head = f"{where} has no settings schema (written before schema 2)" if written is None else where
    return values, f"{head}: {'; '.join(said)}"


class _Settings(BaseModel):
    # allow_inf_nan: no setting has a meaning at inf/NaN (lr=.inf trained to NaN weights).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, values: Any) -> Any:
        values = cls._as_attributes(values)
        # pydantic reads `max_ticks: true` as 1; YAML's true/false are never meant as numbers.
        if isinstance(values, dict):
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _is_number_type(field.annotation):
                    raise ValueError(f"{cls.written_name(name)}={value!r}: expected a number, not a boolean")
        return values

    @classmethod
    def _as_attributes(cls, values: Any) -> Any:
        """The values as the model's attributes (settings written in blocks override it)."""
        return values

    @classmethod
    def written_name(cls, attr: str) -> str:
        """The name a user writes for the attribute ``attr`` (settings written in blocks override it)."""
        return attr

    def as_written(self) -> dict[str, Any]:
        """The settings as a file writes them (what :func:`hf_llpf.recipes.to_yaml` dumps)."""
        return self.model_dump(mode="json")


def _is_number_type(annotation: Any) -> bool:
    options = getattr(annotation, "__args__", None) or (annotation,)
    return bool not in options and any(a in (int, float) for a in options)


def _seed_field() -> Any:
    return Field(0, ge=0, lt=2**63, description="random seed (0 to 2**63 - 1)")


class DataConfig(_Settings):
    """Where the data come from and how they are prepared (see :func:`hf_llpf.data.bundle.load_data`)."""

    source: str = Field("digits", description="'digits', a Hub dataset id, or a local file or folder (docs/data.md)")
    revision: str | None = Field(None, description="Hub revision of the dataset")
    config_name: str | None = Field(None, description="configuration of a Hub dataset that has several")
    image_column: str | None = Field(None, description="column holding the images (auto: image/img/pixel_values)")
    label_column: str | None = Field(None, description="column holding the class labels (auto: label/labels)")
    task: Literal["auto", "image", "text-classification", "causal-lm"] = Field(
        "auto", description="auto: from the endpoints' heads and the data's columns"
    )
    text_column: str | None = Field(None, description="column holding the text (auto: the one string column)")
    text_pair_column: str | None = Field(None, description="second text of sentence-pair classification")
    max_length: int | None = Field(
        None, ge=2, le=1 << 20, description="tokens per example (causal LM: per block); default: the model's limit"
    )
    tokenizer: str | None = Field(None, description="tokenizer folder or Hub id (default: endpoint A's own)")
    recorded: dict[str, Any] | None = Field(
        None, description="written by the run, not a setting: task, example counts, fingerprints of what was read"
    )
    train_split: str = "train"
    test_split: str = "test"
    image_size: int | None = Field(
        None, ge=4, le=4096, description="resize images to this square size (e.g. 32 for CIFAR stems; at most 4096)"
    )
    augment: bool = Field(False, description="CIFAR augmentation: random crop (padding 4) + horizontal flip")
    decode: Literal["auto", "memory", "on_access"] = Field(
        "auto", description="images decoded once into memory, or per batch; auto: on access above 128 MiB of pixels"
    )
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    split_seed: int = Field(0, ge=0, lt=2**32, description="seed of the fixed train/test split of one-split sources")

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("every std must be > 0 (the inputs are divided by it)")
        return v

    @field_validator("mean")
    @classmethod
    def _mean_given(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("give one mean, or one per channel")
        return v


class TrainRecipe(_Settings):
    """How one endpoint is trained (``hf-llpf train``)."""

    model: str = Field("small_cnn", description="a built-in or timm model name")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model constructor")
    data: DataConfig = Field(default_factory=DataConfig)
    seed: int = _seed_field()
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class StageSchedule(_Settings):
    """A hand-set activation tick for the groups whose parameter names match ``match`` (the paper's schedules)."""

    match: str
    start: int = Field(..., ge=0, description="tick at which these groups become active")


class M2OConfig(_Settings):
    """The model-to-origin walk (docs/algorithm.md §6): :func:`hf_llpf.walk_to_origin`, and the first phase of
    ``method: cross-sphere`` (chosen by ``auto`` for endpoints on different spheres)."""

    step_a: float = Field(0.01, gt=0, lt=1, description="shrink per tick as a fraction of the tensor's norm")
    step_f: float = Field(0.0, ge=0, description="fixed L2 shrink length per tick")
    target_variance: float = Field(
        0.25,
        gt=0,
        description="stop ratio of the start variance (walk_to_origin); a "
        "cross-sphere run stops each tensor at the other endpoint's variance instead",
    )
    max_ticks: int = Field(2000, ge=1)
    lr_policy: Literal["var", "std", "none"] = Field(
        "var",
        description="AngleConformal learning rates: lr_0·w/v "
        "('var'), lr_0·sqrt(w/v) ('std'), or off ('none', an ablation)",
    )
    compensate_norms: bool = Field(True, description="grow LayerNorm/RMSNorm/GroupNorm parameters as tensors shrink")


# repair_headroom under a set ceiling (auto): points repaired only to the ceiling end above it on the training
# examples the decision did not read, so the repair aims this fraction of the ceiling lower (measured on a LeNet5
# pair: docs/algorithm.md §10.2 step 7 and docs/benchmarks.md).
HEADROOM_SET = 0.3
# ... and under the auto ceiling, relaxing to it over the first quarter of the repair budget: room where it is cheap,
# none where it would multiply the SGD cost; a set ceiling keeps the whole budget (the same sections give figures).
HEADROOM_AUTO = 0.1
HEADROOM_AUTO_SPAN = 0.25


class ConnectConfig(_Settings):
    """Settings of an LLPF run (``hf-llpf connect``); defaults are the measured hf_llpf defaults.

    The attributes are flat (``config.lr``: what the engine reads); a user writes them in blocks (``repair.lr``,
    :data:`BLOCKS`), and bare flat keys are still read. :meth:`as_written` gives the blocks.
    """

    method: str = Field(
        "auto",
        pattern=r"^[a-z][a-z0-9_\-]*$",
        description="auto: M2M, or M2O then M2M when the spheres differ; m2m: M2M only; cross-sphere: always M2O "
        "then M2M; or any other registered method (hf_llpf.algorithms.registry), checked when the run starts. "
        "(m2o is the walk to the origin alone, hf_llpf.walk_to_origin; before settings schema 2 it named "
        "cross-sphere)",
    )
    schema_version: int = Field(
        SCHEMA,
        ge=1,
        le=SCHEMA,
        description="the settings' schema: a recipe or llpf_config.yaml without one is read with the names of "
        "schema 1 (docs/cli.md#settings-schema)",
    )
    m2o: M2OConfig = Field(default_factory=M2OConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    seed: int = _seed_field()
    # Move (docs/algorithm.md §2.1): s_k = min(‖d‖, max(step_f, step_a·‖d‖, step_r·‖d_0‖)).
    step_a: float = Field(0.0, ge=0, le=1, description="step as a fraction of the remaining distance")
    step_f: float = Field(0.0, ge=0, description="fixed L2 step length (the reference's step_f)")
    step_r: float = Field(0.25, ge=0, le=1, description="step as a fraction of the tensor's initial distance")
    fdf: bool = Field(True, description="Follow Data Flow: stages join one after another; false moves all from tick 0")
    arrival_tol: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="a stage has arrived when every tensor's remaining "
        "distance is at most this fraction of its initial distance",
    )
    schedule: list[StageSchedule] | None = Field(None, description="hand-set stage start ticks instead of arrival")
    stages: list[MoveOverride] | ExplicitStages | None = Field(
        None, description="layer-grouping overrides: a list of {match, stage} moves or {stages: [[regex, ...], ...]}"
    )
    max_ticks: int = Field(2000, ge=1, description="hard limit on ticks (with a schedule: the stop tick)")
    # Minimal training (§2 step 3).
    min_iters: int = Field(
        4, ge=1, description="SGD iterations of a tick's repair at least (with a ceiling: its first round's length)"
    )
    max_iters: int = Field(
        50,
        ge=1,
        description="without a ceiling only (certify.loss_ceiling: null, plain LLPF): the most SGD iterations of a "
        "tick's repair; with a ceiling it does not act (repair.budget bounds the repair)",
    )
    loss_threshold: float = Field(
        0.05,
        ge=0,
        description="without a ceiling only (certify.loss_ceiling: null): the repair stops once the mean of its last "
        "min_iters batch losses is at most this; with a ceiling it does not act (the probe decides)",
    )
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    bn_momentum: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="BatchNorm running-statistics momentum during the repair training (null: the model's own). "
        "A tick changes the weights, so the running statistics must follow them within a few batches, or the "
        "points are judged in eval mode with stale statistics",
    )
    # Devices (Accelerate): the repair training's precision; moves and corrections stay in the endpoints' dtype.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="autocast of the repair training; auto: what the launch says (`accelerate launch "
        "--mixed_precision`, ACCELERATE_MIXED_PRECISION, the accelerate config), else no. A run records the "
        "precision it used",
    )
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="none: every process holds the whole model (data-parallel); fsdp: each process holds 1/N of "
        "every parameter (PyTorch FSDP2, launched with torchrun; one process there runs the code path only; "
        'docs/distributed.md, "Models larger than one device", says what it supports)',
    )
    sync_check_every: int = Field(
        25,
        ge=1,
        description="with several processes, compare a weight checksum "
        "across processes every N ticks (and at the end)",
    )
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="Accelerate trackers that log per-tick loss, stage, distance and SGD "
        "iterations, and the final summary",
    )
    # Certification (docs/algorithm.md §10): the path is held under a loss ceiling on a fixed probe set.
    loss_ceiling: float | Literal["auto"] | None = Field(
        "auto",
        description="the path's accepted maximum mean eval-mode training loss; auto: from the endpoints' larger loss "
        "L, L + max(0.04, ceiling_margin·L) for a classifier (and a custom loss_fn), L + ln 1.5 for a causal LM (a "
        "perplexity at most 1.5x the endpoints'); null: no ceiling (plain LLPF, as in the paper)",
    )
    ceiling_margin: float = Field(0.5, ge=0, description="auto ceiling: the relative margin above the endpoints")
    probe_size: int = Field(
        512,
        ge=1,
        description="above certify.exact_max training examples: the seeded subset the endpoints' losses (and so the "
        "auto ceiling) are measured on (all if fewer)",
    )
    repair_budget: int = Field(
        150,
        ge=0,
        description="with a ceiling: the SGD iterations a tick may spend to bring its point under the ceiling "
        "(rounds of repair.min_iters, 1.5·min_iters, …) before it backtracks to a shorter move; repair.max_iters "
        "and repair.loss_threshold then do not apply",
    )
    repair_headroom: float | Literal["auto"] = Field(
        "auto",
        description="with a ceiling: the repair first aims this fraction of the way from the ceiling down to the "
        "endpoints' probe loss, relaxing to the ceiling as the tick's repair.budget is spent (under the auto "
        f"ceiling: its first {HEADROOM_AUTO_SPAN:.0%}); room for the training examples the probe does not hold; "
        f"auto: {HEADROOM_SET} under a set certify.loss_ceiling, {HEADROOM_AUTO} under the auto one",
    )
    max_backtracks: int = Field(
        6, ge=0, description="step halvings per tick before a point above the ceiling is kept and reported"
    )
    certify_segments: bool = Field(True, description="also probe the midpoint of each segment between ticks")
    certify_exact_max: int = Field(
        2000,
        ge=0,
        description="with a ceiling and at most this many training examples, every decision and the final check "
        "evaluate all of them (an exact certificate; probe_size is not used); with more, points are accepted by "
        "sequential confidence bounds on random draws (certify.delta, certify.clip)",
    )
    certify_delta: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="above certify.exact_max examples: the probability, over the whole run, that any accepted point "
        "or segment is above the ceiling after all",
    )
    certify_clip: float | Literal["auto"] = Field(
        "auto",
        description="above certify.exact_max examples: B, the loss each example is clipped at for the confidence "
        "bound (the guarantee is on the mean of min(loss, B), with a bound on the fraction above B); auto: 10 "
        "ceilings",
    )
    # Bookkeeping.
    save_every: int = Field(1, ge=1, description="write a point every N ticks (plus stage boundaries and the end)")
    # Storage (docs/run-directory.md, "How points are stored"): what a point costs on disk and on the Hub.
    point_dtype: Literal["auto", "bf16", "fp16"] = Field(
        "auto",
        description="floating dtype of the saved points; auto: the endpoints' own. With bf16/fp16 the working model "
        "is rounded to it before every probe and write, so the path is certified and evaluated as stored; the "
        "endpoints are rounded too (the path's ends are exact in that dtype)",
    )
    max_shard_size: int | str = Field(
        "5GB",
        description="a point larger than this is written as safetensors shards with model.safetensors.index.json "
        "(digits with KB/MB/GB/TB, or bytes). timm's own loaders read only unsharded points",
    )
    keep_auto_map: bool = Field(
        False,
        description="keep the endpoints' auto_map / custom_pipelines (pointers to code in other repos) in the points' "
        "config.json and the run's tokenizer/processor configs; by default they are removed (docs/hub.md)",
    )
    checkpoint_every: int = Field(25, ge=1, description="write the resume checkpoint every N ticks")
    loss_limit: float = Field(10.0, gt=0, description="a tick whose loss is above this (or non-finite) is rolled back")
    max_failures: int = Field(5, ge=1, description="rolled-back ticks allowed before the run stops")

    @classmethod
    def _as_attributes(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not any(b in values for b in BLOCKS):
            return values
        try:
            return flat_settings(values)
        except ConfigError as e:
            raise ValueError("; ".join(e.problems)) from None

    @classmethod
    def written_name(cls, attr: str) -> str:
        return setting_name(attr)

    def as_written(self) -> dict[str, Any]:
        """The settings in blocks, as ``llpf_config.yaml`` holds them (:data:`BLOCKS`, in :data:`WRITTEN_ORDER`)."""
        flat = self.model_dump(mode="json")
        blocks = {block: {key: flat[attr] for key, attr in keys.items()} for block, keys in BLOCKS.items()}
        return {name: blocks[name] if name in blocks else flat[name] for name in WRITTEN_ORDER}

    @field_validator("max_shard_size")
    @classmethod
    def _shard_size_readable(cls, v: int | str) -> int | str:
        from hf_llpf.models.weights import shard_bytes

        try:
            shard_bytes(v)
        except ConfigError as e:
            raise ValueError(e.problems[0].split(": ", 1)[1]) from None
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule_starts_at_zero(cls, v: list[StageSchedule] | None) -> list[StageSchedule] | None:
        if v is not None and v and min(s.start for s in v) != 0:
            raise ValueError("the first scheduled stage must start at tick 0")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule_regexes_compile(cls, v: list[StageSchedule] | None) -> list[StageSchedule] | None:
        # Checked here, when the settings are built: the run would only meet a bad regex after --overwrite.
        problems = []
        for i, entry in enumerate(v or []):
            try:
                compile_regex(entry.match)
            except ValueError as e:
                problems.append(f"m2m.schedule[{i}].match={entry.match!r}: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_as_the_trainer_spells_it(cls, v: Any) -> Any:
        """One name (``report_to=tensorboard``), a comma-separated list or ``none``, as transformers' Trainer
        takes it, besides a list."""
        if isinstance(v, str):
            names = [n.strip() for n in v.split(",") if n.strip()]
            return [] if names == ["none"] else names
        return v

    @field_validator("stages", mode="before")
    @classmethod
    def _typed_stage_overrides(cls, v: Any) -> Any:
        if v is None:
            return None
        try:
            return parse_overrides(v, where="m2m.stages")
        except ConfigError as e:
            raise ValueError("; ".join(e.problems)) from None

    @model_validator(mode="after")
    def _iters_ordered(self) -> ConnectConfig:
        if self.max_iters < self.min_iters:
            raise ValueError(f"repair.max_iters ({self.max_iters}) must be >= repair.min_iters ({self.min_iters})")
        if isinstance(self.loss_ceiling, float) and self.loss_ceiling <= 0:
            raise ValueError(f"certify.loss_ceiling={self.loss_ceiling}: must be > 0, 'auto' or null (no ceiling)")
        if isinstance(self.certify_clip, float) and self.certify_clip <= 0:
            raise ValueError(f"certify.clip={self.certify_clip}: must be > 0 or 'auto'")
        if isinstance(self.repair_headroom, float) and not 0 <= self.repair_headroom < 1:
            raise ValueError(f"repair.headroom={self.repair_headroom}: must be in [0, 1) or 'auto'")
        if self.step_a == 0 and self.step_f == 0 and self.step_r == 0:
            raise ValueError(
                "at least one of m2m.step_a, m2m.step_f, m2m.step_r must be positive, or nothing ever moves"
            )
        return self


def build(cls: type[_Settings], values: dict[str, Any]) -> Any:
    """Validate ``values`` into ``cls``, turning pydantic's report into one :class:`ConfigError`.

    Each problem names the field, the value given and, for unknown keys, the valid keys.
    """
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join([cls.written_name(str(e["loc"][0])), *(str(p) for p in e["loc"][1:])]) if e["loc"] else ""
            if e["type"] == "extra_forbidden":
                problems.append(f"{loc}: {_unknown_key(cls, e['loc'])}")
            else:
                msg = e["msg"].removeprefix("Value error, ")
                problems.append(f"{loc}={e.get('input')!r}: {msg}" if loc else msg)
        raise ConfigError(problems) from None


def _unknown_key(cls: type[BaseModel], loc: tuple) -> str:
    """What to say of the unknown key at ``loc``: the closest valid key and every valid one, as a user writes them
    (a :class:`ConnectConfig` key in a block, ``repair.lrr``, is looked up among that block's keys)."""
    name, owner = str(loc[-1]), _owner_class(cls, loc[:-1])
    candidates = {k: k for k in (owner.model_fields if owner else ())}
    valid = sorted(candidates)
    if owner is ConnectConfig:
        block, dot, key = name.partition(".")
        if dot and block in BLOCKS:
            name, candidates = key, {k: k for k in BLOCKS[block]}
            valid = list(BLOCKS[block])
        else:  # a bare key may be a block's key, written without its block
            candidates = {**{a: setting_name(a) for a in ConnectConfig.model_fields}, **{b: b for b in BLOCKS}}
            valid = list(WRITTEN_ORDER)
    close = difflib.get_close_matches(name, list(candidates), n=1)
    hint = f" (did you mean {candidates[close[0]]!r}?)" if close else ""
    return f"unknown key{hint}; valid keys: {', '.join(valid)}"


def _owner_class(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls
