"""Follow-Data-Flow layer grouping for any ``nn.Module`` (LLPF spec §2, "Follow Data Flow").

A model becomes an ordered list of **stages**; each stage holds one or more **layer groups**; a group is the
parameters one module owns directly (weight and bias together) with its normalisation kind.

How the order is found (one real forward of one example batch, eval mode, no grad):

- Forward hooks on every module that directly owns parameters and has no parameter-owning descendants
  ("leaf owners") record the order of first calls, the tensor each call reads and the tensor it returns.
  Declaration order (``named_modules``) is wrong for ViT and BERT, so it is never used for leaves.
- Stage rules, applied to leaf owners in first-call order:
    1. **parallel readers**: a module reading the same tensor (same storage, shape, stride and in-place
       version) as an earlier module joins that module's stage: attention q/k/v, a ResNet block's conv1 and
       its downsample shortcut, parallel branches;
    2. **norm after producer**: a normalisation layer whose input is exactly the output of an earlier
       module joins that module's stage, so conv+bn (or linear+norm) move together, as in the reference
       schedules ("stem (conv1, bn1)"); a norm reading anything else (a pre-norm transformer's residual
       stream) gets its own stage;
    3. **index inputs**: consecutive modules that read integer tensors (token, position, type embeddings)
       share a stage: they read ids, not each other's features;
    4. otherwise a new stage. Modules that run more than once are placed at their first call; modules that
       never run form the last stage and are listed in ``StagePlan.never_run``.
- Parameters owned by a container (a module with parameter-owning descendants, e.g. ViT ``cls_token`` and
  ``pos_embed``) are placed at their first use in a ``torch.export`` graph: each gets its own group, put in
  a new stage just before the stage of the first leaf module used after it. If export fails they are placed
  by declaration (before the stage of the next declared leaf parameter). ``order_source`` says which.
- Tied parameters (the same ``Parameter`` under two names) appear once, under their first name.
- Normalisation kind is found by module type, never by a name substring (spec §6).

Overrides adjust the automatic plan with a few lines of YAML (see :func:`apply_overrides`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hf_llpf.errors import ConfigError, UnknownNameError

__all__ = [
    "NORM_KINDS",
    "LayerGroup",
    "Stage",
    "StagePlan",
    "apply_overrides",
    "build_stages",
    "format_stage_table",
    "load_overrides",
    "norm_kind",
]

NORM_KINDS = ("batchnorm", "layernorm", "rmsnorm", "groupnorm")
ROOT_NAME = "<root>"
CONTAINER_TYPE = "Parameter"
_JSON_FORMAT = 1


# ----------------------------------------------------------------------------------------------- norm kinds
def _norm_classes() -> list[tuple[type, str]]:
    """(class, kind) pairs, most specific first; timm's own norm classes are added when timm is installed."""
    pairs: list[tuple[type, str]] = [
        (nn.modules.batchnorm._BatchNorm, "batchnorm"),
        (nn.LayerNorm, "layernorm"),
        (nn.GroupNorm, "groupnorm"),
        # InstanceNorm is GroupNorm with one channel per group and no running stats unless asked for.
        (nn.modules.instancenorm._InstanceNorm, "groupnorm"),
    ]
    if hasattr(nn, "RMSNorm"):
        pairs.append((nn.RMSNorm, "rmsnorm"))
    try:
        import timm.layers as tl
    except Exception:  # timm missing or broken: torch classes are enough
        return pairs
    for cls_name, kind in (
        ("RmsNorm", "rmsnorm"),
        ("RmsNorm2d", "rmsnorm"),
        ("SimpleNorm", "rmsnorm"),
        ("SimpleNorm2d", "rmsnorm"),
        ("LayerNorm2d", "layernorm"),
        ("LayerNormAct", "layernorm"),
        ("LayerNormAct2d", "layernorm"),
    ):
        cls = getattr(tl, cls_name, None)
        if isinstance(cls, type):
            pairs.append((cls, kind))
    return pairs


_NORM_CLASSES: list[tuple[type, str]] | None = None


def norm_kind(module: nn.Module) -> str | None:
    """Normalisation kind of a module by its type: one of ``NORM_KINDS`` or ``None``.

    torch's BatchNorm*/SyncBatchNorm, LayerNorm, GroupNorm, InstanceNorm* (reported as ``"groupnorm"``) and
    RMSNorm, their subclasses (timm's ``BatchNormAct2d``, ``LayerNorm2d``, ...), timm's ``RmsNorm`` family,
    and transformers' per-model RMSNorm classes (a class defined in ``transformers`` whose class name ends in
    ``RMSNorm``: transformers defines one per architecture with no common base class).

    Args:
        module: the module.

    Returns:
        The kind, or ``None`` for a module that is not a normalisation layer.
    """
    global _NORM_CLASSES
    if _NORM_CLASSES is None:
        _NORM_CLASSES = _norm_classes()
    for cls, kind in _NORM_CLASSES:
        if isinstance(module, cls):
            return kind
    for cls in type(module).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__.endswith("RMSNorm"):
            return "rmsnorm"
    return None


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class LayerGroup:
    """The parameters one module owns directly, moved together.

    Attributes:
        name: module path (``"layer1.0.conv1"``), ``"<root>"`` for the root module; for a parameter owned by
            a container module, the parameter's full name (``"cls_token"``).
        module_type: class name of the module (``"Conv2d"``), ``"Parameter"`` for container-owned parameters.
        param_names: full parameter names as in ``model.named_parameters()`` (canonical name for tied ones).
        norm: ``"batchnorm"``, ``"layernorm"``, ``"rmsnorm"``, ``"groupnorm"`` or ``None`` (by module type).
        numel: number of elements over all its parameters.
    """

    name: str
    module_type: str
    param_names: tuple[str, ...]
    norm: str | None
    numel: int


@dataclass(frozen=True)
class Stage:
    """Layer groups that become active together (FDF: parallel groups share a stage).

    Attributes:
        index: position of the stage, 0 = shallowest.
        groups: the groups, in execution order.
    """

    index: int
    groups: tuple[LayerGroup, ...]


@dataclass
class StagePlan:
    """Ordered stages of a model, plus what is not moved.

    Attributes:
        stages: the stages, shallow to deep.
        buffers: buffer names (BatchNorm running statistics, ...): never moved or corrected.
        tied: alias parameter name -> canonical name; aliases appear in no group.
        never_run: names of groups whose module never ran for the example batch (they form the last stage).
        order_source: how the order was found: ``"hooks"`` (no container-owned parameters),
            ``"hooks+export graph"`` or ``"hooks+declared"`` (how container-owned parameters were placed),
            with ``"+overrides"`` appended when a user override was applied.
    """

    stages: list[Stage]
    buffers: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    never_run: list[str] = field(default_factory=list)
    order_source: str = "hooks"

    def groups(self) -> list[LayerGroup]:
        """All layer groups, in stage order."""
        return [g for s in self.stages for g in s.groups]

    def param_names(self) -> list[str]:
        """All canonical parameter names, in stage order (each exactly once)."""
        return [p for g in self.groups() for p in g.param_names]

    def stage_of(self, param_name: str) -> int:
        """Index of the stage holding ``param_name`` (a tied alias resolves to its canonical name).

        Raises:
            UnknownNameError: no group holds that parameter.
        """
        name = self.tied.get(param_name, param_name)
        for s in self.stages:
            for g in s.groups:
                if name in g.param_names:
                    return s.index
        raise UnknownNameError("parameter", param_name, self.param_names())

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the content of ``layer_groups.json``); :meth:`from_json` inverts it."""
        return {
            "format": _JSON_FORMAT,
            "order_source": self.order_source,
            "stages": [
                {
                    "index": s.index,
                    "groups": [
                        {
                            "name": g.name,
                            "module_type": g.module_type,
                            "param_names": list(g.param_names),
                            "norm": g.norm,
                            "numel": g.numel,
                        }
                        for g in s.groups
                    ],
                }
                for s in self.stages
            ],
            "buffers": list(self.buffers),
            "tied": dict(self.tied),
            "never_run": list(self.never_run),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StagePlan:
        """Rebuild a plan from :meth:`to_json` output.

        Raises:
            ConfigError: a required key is missing.
        """
        missing = [k for k in ("stages", "buffers", "tied", "never_run", "order_source") if k not in d]
        if missing:
            raise ConfigError([f"layer_groups.json: missing key {k!r}" for k in missing])
        stages = [
            Stage(
                index=int(s["index"]),
                groups=tuple(
                    LayerGroup(
                        name=g["name"],
                        module_type=g["module_type"],
                        param_names=tuple(g["param_names"]),
                        norm=g["norm"],
                        numel=int(g["numel"]),
                    )
                    for g in s["groups"]
                ),
            )
            for s in d["stages"]
        ]
        return cls(
            stages=stages,
            buffers=list(d["buffers"]),
            tied=dict(d["tied"]),
            never_run=list(d["never_run"]),
            order_source=str(d["order_source"]),
        )


# --------------------------------------------------------------------------------------- calling the model
def _is_label_tensor(x: Any, inputs: Any) -> bool:
    # Class labels: an integer tensor with one entry per sample. A 2-D integer tensor (attention mask,
    # token type ids) is an input, not a label.
    return (
        isinstance(x, Tensor)
        and not x.is_floating_point()
        and not x.is_complex()
        and x.dim() <= 1
        and (not isinstance(inputs, Tensor) or inputs.dim() == 0 or x.numel() == inputs.shape[0])
    )


def _call_spec(batch: Any) -> tuple[tuple, dict]:
    """How to call the model on ``batch``: ``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if len(items) == 2 and _is_label_tensor(items[1], items[0]):
            return _call_spec(items[0])  # (inputs, labels): the labels are not a model input
        return tuple(items), {}
    raise ConfigError(
        f"example_batch: got {type(batch).__name__}; allowed: a Tensor, a tuple/list (inputs[, labels]), "
        "a dict of tensors, or any object together with forward_fn"
    )


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return type(obj)({k: _to_device(v, device) for k, v in obj.items()}) if type(obj) is dict else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _first_tensor(obj: Any, depth: int = 0) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if depth > 2:
        return None
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_tensor(v, depth + 1)
            if t is not None:
                return t
    return None


def _key(t: Tensor) -> tuple | None:
    """Identity of a tensor's contents at this moment: storage, view geometry and in-place version."""
    try:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)
    except Exception:  # tensors without storage (meta, some subclasses)
        return None


class _Caller(nn.Module):
    """Wraps the model and the way to call it, so torch.export sees one module with plain inputs."""

    def __init__(self, model: nn.Module, call: Callable[..., Any]):
        super().__init__()
        self.model = model
        self._call = call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.model, *args, **kwargs)


# --------------------------------------------------------------------------------------------- build_stages
def _direct_params(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}.{k}" if prefix else k, p) for k, p in module._parameters.items() if p is not None]


def _group(name: str, module_type: str, params: list[tuple[str, nn.Parameter]], norm: str | None) -> LayerGroup:
    return LayerGroup(
        name=name or ROOT_NAME,
        module_type=module_type,
        param_names=tuple(n for n, _ in params),
        norm=norm,
        numel=sum(p.numel() for _, p in params),
    )


def _export_first_use(model: nn.Module, call: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, int]:
    """Parameter name -> index of the first graph node that reads it, from a ``torch.export`` graph."""
    wrapper = _Caller(model, call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(wrapper, args, kwargs, strict=False)
    to_param = ep.graph_signature.inputs_to_parameters  # placeholder name -> "model.<fqn>"
    first: dict[str, int] = {}
    for i, node in enumerate(ep.graph.nodes):
        if node.op == "placeholder":
            continue
        for inp in node.all_input_nodes:
            fqn = to_param.get(inp.name)
            if fqn is not None:
                first.setdefault(fqn.removeprefix("model."), i)
    return first


def build_stages(
    model: nn.Module,
    example_batch: Any,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    overrides: Any = None,
) -> StagePlan:
    """Derive the Follow-Data-Flow stages of ``model`` from one forward pass (spec §2, FDF).

    The rules are in the module docstring. The model runs once in eval mode under ``torch.no_grad()``; every
    module's training flag is restored and every hook removed afterwards, also on error.

    Args:
        model: any ``nn.Module``.
        example_batch: one batch, called as follows (unless ``forward_fn`` is given): a Tensor ->
            ``model(x)``; a dict (or other Mapping) -> ``model(**batch)``; a tuple/list -> ``model(*batch)``,
            except that a pair ``(inputs, labels)`` whose second item is an integer tensor with at most one
            dimension and one entry per sample is treated as inputs and class labels, and only ``inputs`` is
            passed (by the same rules). Tensors are moved to the model's device.
        forward_fn: ``forward_fn(model, batch)`` runs the model instead of the rules above.
        overrides: optional user overrides, applied with :func:`apply_overrides`.

    Returns:
        The plan.

    Raises:
        ConfigError: the batch has an unsupported type, or the overrides are invalid.
    """
    # Tied parameters: the same Parameter object under several names; the first name is canonical.
    canonical: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in canonical:
            tied[name] = canonical[id(p)]
        else:
            canonical[id(p)] = name

    # Owners: modules with their own parameters; leaves have no parameter-owning descendant.
    leaves: dict[str, nn.Module] = {}
    leaf_groups: dict[str, LayerGroup] = {}
    container_params: list[tuple[str, nn.Parameter]] = []
    for mname, module in model.named_modules():
        own = [(n, p) for n, p in _direct_params(module, mname) if n not in tied]
        if not module._parameters or all(p is None for p in module._parameters.values()):
            continue
        if any(any(v is not None for v in m._parameters.values()) for m in module.modules() if m is not module):
            container_params.extend(own)
            continue
        leaves[mname] = module
        if own:  # a module whose parameters are all tied aliases (GPT-2 lm_head) contributes no group
            leaf_groups[mname] = _group(mname, type(module).__name__, own, norm_kind(module))

    # One forward pass with hooks.
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    batch = _to_device(example_batch, device)
    if forward_fn is not None:
        args, kwargs = (), {}

        def call(m: nn.Module) -> Any:
            return forward_fn(m, batch)

    else:
        args, kwargs = _call_spec(batch)

        def call(m: nn.Module, *a: Any, **k: Any) -> Any:
            return m(*a, **k)

    order: list[str] = []
    in_key: dict[str, tuple | None] = {}
    in_int: dict[str, bool] = {}
    out_owner: dict[tuple, str] = {}
    keep: list[Tensor] = []  # strong references: a kept tensor's storage cannot be reused by another tensor
    names = {id(m): n for n, m in leaves.items()}

    def pre_hook(mod: nn.Module, a: tuple, k: dict) -> None:
        name = names[id(mod)]
        if name in in_key:
            return
        t = _first_tensor((a, k))
        order.append(name)
        in_key[name] = _key(t) if t is not None else None
        in_int[name] = t is not None and not t.is_floating_point() and not t.is_complex()
        if t is not None:
            keep.append(t)

    def post_hook(mod: nn.Module, a: tuple, k: dict, out: Any) -> None:
        t = _first_tensor(out)
        if t is not None:
            key = _key(t)
            if key is not None:
                out_owner.setdefault(key, names[id(mod)])
                keep.append(t)

    modes = {m: m.training for m in model.modules()}
    handles = []
    first_use: dict[str, int] | None = None
    try:
        for m in leaves.values():
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(post_hook, with_kwargs=True))
        model.eval()
        with torch.no_grad():
            call(model, *args, **kwargs)
        for h in handles:
            h.remove()
        handles.clear()
        keep.clear()
        if container_params:  # export is slow: only when hooks cannot place some parameters
            try:
                with torch.no_grad():
                    first_use = _export_first_use(model, call, args, kwargs)
            except Exception:  # export is best effort: any failure falls back to declaration order
                first_use = None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode

    # Stage rules (module docstring) over leaves in first-call order.
    stage_lists: list[list[LayerGroup]] = []
    stage_of_leaf: dict[str, int] = {}
    reader_stage: dict[tuple, int] = {}
    prev_int_stage: int | None = None
    for name in order:
        group = leaf_groups.get(name)
        key = in_key[name]
        if group is None:
            continue
        s = None
        if key is not None and key in reader_stage:
            s = reader_stage[key]  # rule 1: parallel readers
        elif group.norm is not None and key is not None and out_owner.get(key) in stage_of_leaf:
            s = stage_of_leaf[out_owner[key]]  # rule 2: norm after its producer
        elif in_int[name] and prev_int_stage is not None:
            s = prev_int_stage  # rule 3: consecutive index inputs
        if s is None:
            stage_lists.append([])
            s = len(stage_lists) - 1
        stage_lists[s].append(group)
        stage_of_leaf[name] = s
        if key is not None:
            reader_stage.setdefault(key, s)
        prev_int_stage = s if in_int[name] else None

    never_run = [g.name for n, g in leaf_groups.items() if n not in stage_of_leaf]
    last_stage = [leaf_groups[n] for n in leaf_groups if n not in stage_of_leaf]

    # Container-owned parameters: one group each, in a new stage just before the stage of the next leaf.
    order_source = "hooks"
    if container_params:
        param_leaf = {p: n for n, g in leaf_groups.items() if n in stage_of_leaf for p in g.param_names}
        anchor: dict[str, int | None] = {}  # container param -> stage it precedes (None = after all)
        if first_use is not None:
            order_source = "hooks+export graph"
            leaf_first = sorted((i, param_leaf[p]) for p, i in first_use.items() if p in param_leaf)
            for pname, _ in container_params:
                i = first_use.get(pname)
                if i is None:
                    anchor[pname] = -1  # never used
                    continue
                nxt = next((n for j, n in leaf_first if j > i), None)
                anchor[pname] = stage_of_leaf[nxt] if nxt is not None else None
        else:
            order_source = "hooks+declared"
            declared = [n for n, _ in model.named_parameters()]
            pos = {n: i for i, n in enumerate(declared)}
            for pname, _ in container_params:
                nxt = next((param_leaf[n] for n in declared[pos[pname] + 1 :] if n in param_leaf), None)
                anchor[pname] = stage_of_leaf[nxt] if nxt is not None else None
        inserts: dict[int | None, list[LayerGroup]] = {}
        params = dict(container_params)
        for pname, a in anchor.items():
            g = _group(pname, CONTAINER_TYPE, [(pname, params[pname])], None)
            if a == -1:
                never_run.append(g.name)
                last_stage.append(g)
            else:
                inserts.setdefault(a, []).append(g)
        merged: list[list[LayerGroup]] = []
        for i, groups in enumerate(stage_lists):
            if i in inserts:
                merged.append(inserts[i])
            merged.append(groups)
        if None in inserts:
            merged.append(inserts[None])
        stage_lists = merged
    if last_stage:
        stage_lists.append(last_stage)

    plan = StagePlan(
        stages=[Stage(index=i, groups=tuple(gs)) for i, gs in enumerate(stage_lists)],
        buffers=[n for n, _ in model.named_buffers()],
        tied=tied,
        never_run=never_run,
        order_source=order_source,
    )
    if overrides is not None:
        plan = apply_overrides(plan, overrides, model)
    return plan


# ------------------------------------------------------------------------------------------------ overrides
def load_overrides(path_or_obj: Any) -> list | dict:
    """Read user overrides from a YAML file, or pass an already-parsed object through (validated by shape).

    Two forms are accepted (see :func:`apply_overrides`): a list of ``{match: <regex>, stage: <int|first|last>}``
    entries, or a mapping ``{stages: [[regex, ...], ...]}``.

    Args:
        path_or_obj: a path (``str`` or ``os.PathLike``) to a YAML file, or a list/dict.

    Returns:
        The parsed list or dict.

    Raises:
        ConfigError: the file is missing or unreadable, or the content is neither form.
    """
    obj = path_or_obj
    if isinstance(path_or_obj, (str, os.PathLike)):
        import yaml

        path = os.fspath(path_or_obj)
        if not os.path.isfile(path):
            raise ConfigError(f"overrides: file not found: {path!r}")
        try:
            with open(path, encoding="utf-8") as fh:
                obj = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise ConfigError(f"overrides: {path!r} is not valid YAML: {e}") from e
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise ConfigError(
        f"overrides: got {type(obj).__name__}; allowed: a list of {{match, stage}} entries "
        "or {stages: [[regex, ...]]}"
    )


def _compile(pattern: Any, where: str, problems: list[str]) -> re.Pattern | None:
    if not isinstance(pattern, str):
        problems.append(f"{where}: match must be a regex string, got {pattern!r}")
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        problems.append(f"{where}: invalid regex {pattern!r}: {e}")
        return None


def _matching_groups(rx: re.Pattern, groups: list[LayerGroup], aliases: dict[str, list[str]]) -> list[int]:
    # A regex matches a group when it matches (re.search) any of its parameter names or their tied aliases.
    return [
        i
        for i, g in enumerate(groups)
        if any(rx.search(p) or any(rx.search(a) for a in aliases.get(p, ())) for p in g.param_names)
    ]


def apply_overrides(plan: StagePlan, overrides: Any, model: nn.Module | None = None) -> StagePlan:
    """Adjust a plan with user overrides; returns a new plan (the input is not modified).

    Regexes are matched with ``re.search`` against parameter names (tied aliases included); a match selects
    the whole group that holds the parameter.

    - **moves** (a list): ``[{match: "^head\\.", stage: "last"}, {match: "pos_embed", stage: 0}]`` moves
      every matching group into that stage of ``plan`` (an index of ``plan.stages``, or ``"first"``/``"last"``);
      within a stage groups keep their automatic order; stages left empty are dropped and the rest renumbered.
    - **explicit** (a mapping): ``{stages: [["^conv1\\.", "^bn1\\."], ["^layer1\\."], ...]}`` gives the
      complete stage list; every group must be matched by the regexes of exactly one stage.

    Args:
        plan: the automatic plan.
        overrides: a YAML path or the parsed list/dict (see :func:`load_overrides`).
        model: unused; reserved so callers can pass it for future checks against the model.

    Returns:
        The adjusted plan (``order_source`` gets ``"+overrides"``).

    Raises:
        ConfigError: malformed entries, invalid regexes, a regex that matches nothing, a group matched more
            than once, or (explicit form) groups matched by no stage; all problems are listed at once.
    """
    del model
    spec = load_overrides(overrides)
    groups = plan.groups()
    aliases: dict[str, list[str]] = {}
    for alias, canon in plan.tied.items():
        aliases.setdefault(canon, []).append(alias)
    home = {g.name: s.index for s in plan.stages for g in s.groups}
    problems: list[str] = []
    n_stages = len(plan.stages)

    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"stages"})
        if unknown or not isinstance(spec.get("stages"), list):
            raise ConfigError(f"overrides: a mapping must be {{stages: [[regex, ...], ...]}}; got keys {sorted(spec)}")
        hits: dict[int, set[int]] = {}
        for si, patterns in enumerate(spec["stages"]):
            patterns = [patterns] if isinstance(patterns, str) else patterns
            if not isinstance(patterns, list) or not patterns:
                problems.append(f"overrides.stages[{si}]: must be a non-empty list of regexes, got {patterns!r}")
                continue
            for pi, pattern in enumerate(patterns):
                rx = _compile(pattern, f"overrides.stages[{si}][{pi}]", problems)
                if rx is None:
                    continue
                found = _matching_groups(rx, groups, aliases)
                if not found:
                    problems.append(f"overrides.stages[{si}]: regex {pattern!r} matches no parameter")
                for gi in found:
                    hits.setdefault(gi, set()).add(si)
        unmatched = [g.name for gi, g in enumerate(groups) if gi not in hits]
        double = [f"{groups[gi].name} (stages {sorted(s)})" for gi, s in sorted(hits.items()) if len(s) > 1]
        if unmatched:
            problems.append(f"overrides: groups matched by no stage: {', '.join(unmatched)}")
        if double:
            problems.append(f"overrides: groups matched by more than one stage: {', '.join(double)}")
        if problems:
            raise ConfigError(problems)
        new_lists: list[list[LayerGroup]] = [[] for _ in spec["stages"]]
        for gi, g in enumerate(groups):
            new_lists[next(iter(hits[gi]))].append(g)
    else:
        target: dict[int, int] = {}
        matched_by: dict[int, list[int]] = {}
        for ei, entry in enumerate(spec):
            where = f"overrides[{ei}]"
            if not isinstance(entry, Mapping) or set(entry) != {"match", "stage"}:
                problems.append(f"{where}: must be a mapping with exactly the keys match and stage, got {entry!r}")
                continue
            rx = _compile(entry["match"], where, problems)
            stage = entry["stage"]
            if stage == "first":
                idx = 0
            elif stage == "last":
                idx = n_stages - 1
            elif isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < n_stages:
                idx = stage
            else:
                problems.append(f"{where}: stage: got {stage!r}; allowed: an integer 0..{n_stages - 1}, first, last")
                continue
            if rx is None:
                continue
            found = _matching_groups(rx, groups, aliases)
            if not found:
                problems.append(f"{where}: regex {entry['match']!r} matches no parameter")
            for gi in found:
                target[gi] = idx
                matched_by.setdefault(gi, []).append(ei)
        double = [f"{groups[gi].name} (entries {e})" for gi, e in sorted(matched_by.items()) if len(e) > 1]
        if double:
            problems.append(f"overrides: groups matched by more than one entry: {', '.join(double)}")
        if problems:
            raise ConfigError(problems)
        new_lists = [[] for _ in range(n_stages)]
        for gi, g in enumerate(groups):  # automatic order kept within each stage
            new_lists[target.get(gi, home[g.name])].append(g)

    stages = [Stage(index=i, groups=tuple(gs)) for i, gs in enumerate(gs for gs in new_lists if gs)]
    return StagePlan(
        stages=stages,
        buffers=list(plan.buffers),
        tied=dict(plan.tied),
        never_run=list(plan.never_run),
        order_source=plan.order_source
        if plan.order_source.endswith("+overrides")
        else plan.order_source + "+overrides",
    )


# ---------------------------------------------------------------------------------------------------- table
def format_stage_table(plan: StagePlan, model: nn.Module) -> str:
    """The plan as a text table: stage, group, module type, parameter, numel, variance (one row per parameter).

    Args:
        plan: the plan.
        model: the model whose current parameter values give the variance column.

    Returns:
        The table, followed by lines on the order source, tied parameters, never-run groups and buffers.
    """
    from hf_llpf.geometry import variances

    params = dict(model.named_parameters())
    names = plan.param_names()
    var = variances([params[n] for n in names]).tolist() if names else []
    var_of = dict(zip(names, var))
    header = ("stage", "group", "module type", "parameter", "numel", "variance")
    rows = []
    for s in plan.stages:
        for gi, g in enumerate(s.groups):
            for pi, p in enumerate(g.param_names):
                prefix = g.name + "."
                short = p[len(prefix) :] if p.startswith(prefix) else p
                rows.append(
                    (
                        str(s.index) if gi == 0 and pi == 0 else "",
                        g.name if pi == 0 else "",
                        (g.module_type + (f" [{g.norm}]" if g.norm else "")) if pi == 0 else "",
                        short,
                        str(params[p].numel()),
                        f"{var_of[p]:.4g}",
                    )
                )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4, 5}

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    total = sum(g.numel for g in plan.groups())
    lines.append(
        f"{len(plan.stages)} stages, {len(plan.groups())} groups, {total} parameters; order: {plan.order_source}"
    )
    if plan.tied:
        lines.append("tied: " + ", ".join(f"{a} -> {c}" for a, c in plan.tied.items()))
    if plan.never_run:
        lines.append("never ran (last stage): " + ", ".join(plan.never_run))
    lines.append(f"buffers (never moved): {len(plan.buffers)}")
    return "\n".join(lines)
