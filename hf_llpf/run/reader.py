"""Reading a run directory back: its JSON files checked as they are read, and :class:`RunPath`, the lazy reader.

Every name read from a run directory (or a Hub snapshot of one) is resolved inside it
(:mod:`hf_llpf.files.safe_paths`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import safetensors.torch
import torch
from torch import nn

from hf_llpf.errors import CorruptCheckpointError, RunDirectoryError
from hf_llpf.files.safe_paths import check_relative_name, resolve_inside, walk_files
from hf_llpf.files.textfiles import check_kind, parse_json, read_text, read_yaml
from hf_llpf.models.endpoints import Endpoint, load_endpoint
from hf_llpf.models.weights import weight_files
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON, LAYER_GROUPS_JSON, METRICS_JSON, README

_HALF = (torch.bfloat16, torch.float16)  # storage dtypes of point_dtype, read back in the working dtype


def read_run_json(root: str | os.PathLike, name: str, *, kind: type = dict) -> Any:
    """A JSON file of a run directory, refused with its name when it does not parse or is not a ``kind``.

    Raises:
        RunDirectoryError: naming the file, the problem and how the file is made.
    """
    file = FsPath(root) / name
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise RunDirectoryError(f"{file}: cannot be read ({err.strerror or err})") from None
    try:
        return parse_json(raw, where=str(file), kind=kind)
    except RunDirectoryError as err:
        raise RunDirectoryError(f"{err}; it is written by `hf-llpf connect`") from None


# What the readers of path_metrics.json rely on, checked where it is read: (dotted key, allowed JSON types).
_NUMBER = (int, float)
SUMMARY_SHAPE: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("run", (dict,)),
    ("evaluation", (dict,)),
    ("llpf", (dict,)),
    ("linear", (dict,)),
    ("run.certification", (dict, type(None))),
    ("run.certification.ceiling", (*_NUMBER, type(None))),
    ("run.certification.certified", (bool,)),
    ("run.timing", (dict,)),
    ("run.phases", (list,)),
    ("run.stage_starts", (list,)),
    ("run.resumed_with", (list,)),
    ("run.sgd_iters", _NUMBER),
    ("run.ticks", _NUMBER),
    ("run.failures", _NUMBER),
)
# Point-row columns the readers do arithmetic on: a number, or null where not measured.
NUMERIC_COLUMNS = ("train_loss", "dist_a", "dist_b", "probe_loss", "segment_loss", "eval_train_loss",
                   "eval_train_acc", "test_loss", "test_acc", "position")  # fmt: skip


def check_summary(summary: dict, *, where: str) -> None:
    """Refuse a ``summary`` whose known keys have another JSON type than the readers expect (:data:`SUMMARY_SHAPE`).

    Raises:
        RunDirectoryError: naming the file, the key and the type expected.
    """
    for key, kinds in SUMMARY_SHAPE:
        parent, _, last = key.rpartition(".")
        holder = summary
        for part in parent.split(".") if parent else ():
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and last in holder:
            check_kind(holder[last], kind=kinds, where=f"{where}: summary.{key}", error=RunDirectoryError)


def read_metrics(root: str | os.PathLike) -> dict:
    """``path_metrics.json`` of a run directory, its shape checked (``points``: a list of rows with a tick; the
    summary's known keys and the rows' numeric columns of the JSON types the readers expect)."""
    file = FsPath(root) / METRICS_JSON
    data = read_run_json(root, METRICS_JSON)
    points = data.get("points")
    if not isinstance(points, list) or not all(
        isinstance(p, dict) and isinstance(p.get("tick"), int) and not isinstance(p["tick"], bool) for p in points
    ):
        raise RunDirectoryError(f"{file}: 'points' must be a list of rows, each with an integer 'tick'")
    for key, kind in (("ticks", list), ("summary", dict)):
        if not isinstance(data.get(key, kind()), kind):
            raise RunDirectoryError(f"{file}: {key!r} must be a JSON {kind.__name__}")
    for j, row in enumerate(points):
        for col in NUMERIC_COLUMNS:
            if col in row:
                check_kind(row[col], kind=(*_NUMBER, type(None)), where=f"{file}: points[{j}].{col}",
                           error=RunDirectoryError)  # fmt: skip
    check_summary(data.get("summary", {}), where=str(file))
    return data


class RunPath:
    """A path on disk: metrics are read eagerly, points are loaded lazily one at a time.

    ``len(path)`` is the number of saved points; ``path.ticks`` their ticks; ``path.metrics`` one dict
    per point; ``path.model_at(i)`` builds point ``i`` (negative indices count from the end);
    ``path.state_dict_at(i)`` reads only its tensors.

    A ``RunPath`` does not hold its run directory: it reads what is on disk when it is made and when a point is
    loaded. The commands and functions that read one (``evaluate_path``, ``export_point``, ``push_path``, the
    card) hold it for their whole call, refused while a run writes it (:func:`hf_llpf.run.lock.holding`).

    Args:
        root: the run directory (or a downloaded copy of a published path).
        template: for paths of plain ``nn.Module`` s (no timm/transformers config): a module of the same
            architecture whose copy receives each point's weights.
    """

    def __init__(self, root: str | os.PathLike, *, template: nn.Module | None = None):
        self.root = FsPath(root)
        if not (self.root / METRICS_JSON).is_file():
            raise RunDirectoryError(f"{str(self.root)!r} is not a run directory: {METRICS_JSON} is missing")
        data = read_metrics(self.root)
        self.metrics: list[dict] = data["points"]
        for j, row in enumerate(self.metrics):  # refuse a hostile name before anything is opened
            check_relative_name(row.get("point"), field=f"points[{j}].point")
        self.tick_log: list[dict] = data.get("ticks", [])
        self.summary: dict = data.get("summary", {})
        self.template = template
        self._file_names_are_model_names: bool | None = None

    def __len__(self) -> int:
        return len(self.metrics)

    def __repr__(self) -> str:
        return f"RunPath({str(self.root)!r}, points={len(self)}, ticks={self.ticks[:1]}..{self.ticks[-1:]})"

    @property
    def ticks(self) -> list[int]:
        """The tick of each saved point."""
        return [int(m["tick"]) for m in self.metrics]

    @property
    def config(self) -> dict:
        """The resolved settings of the run (``llpf_config.yaml``)."""
        return read_yaml(self.root / CONFIG_YAML)

    @property
    def endpoints(self) -> dict:
        """``endpoints.json`` (``A``/``B``: an object each, or null for a walk to the origin)."""
        data = read_run_json(self.root, ENDPOINTS_JSON)
        for key in ("A", "B"):
            if not isinstance(data.get(key), (dict, type(None))):
                raise RunDirectoryError(f"{self.root / ENDPOINTS_JSON}: {key!r} must be an object (an endpoint)")
        return data

    def validate(self) -> None:
        """Read every metadata file now (endpoints, stages, settings), so a damaged one is refused before any work.

        Raises:
            RunDirectoryError: naming the file and what is wrong with it.
        """
        if (self.root / ENDPOINTS_JSON).is_file():
            self.endpoints  # noqa: B018 - read for its checks
        self.layer_groups  # noqa: B018
        if (self.root / CONFIG_YAML).is_file():
            read_yaml(self.root / CONFIG_YAML)
        if (self.root / README).is_file():  # rewritten with the report: its text must be readable
            read_text(self.root / README)

    @property
    def layer_groups(self) -> dict | None:
        """``layer_groups.json`` (the stage plan), or None when the run directory has none."""
        if not (self.root / LAYER_GROUPS_JSON).is_file():
            return None
        data = read_run_json(self.root, LAYER_GROUPS_JSON)
        stages = data.get("stages")
        if not isinstance(stages, list) or not all(
            isinstance(s, dict) and isinstance(s.get("groups"), list) and all(isinstance(g, dict) for g in s["groups"])
            for s in stages
        ):
            raise RunDirectoryError(
                f"{self.root / LAYER_GROUPS_JSON}: 'stages' must be a list of stages, each with a list of 'groups' "
                "(the format `hf-llpf groups --json` writes)"
            )
        return data

    def point_dir(self, i: int) -> FsPath:
        """The folder of point ``i``; its recorded name must resolve inside the run directory."""
        field = f"points[{self._index(i)}].point"
        return resolve_inside(self.root, self.point_name(i), field=field, allowed_root=self._fence())

    def point_name(self, i: int) -> str:
        """The recorded folder name of point ``i`` (relative), refused when it could leave the run directory."""
        j = self._index(i)
        return check_relative_name(self.metrics[j].get("point"), field=f"points[{j}].point")

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"point index {i} out of range for a path of {n} points (allowed: {-n}..{n - 1})")
        return i % n

    def state_dict_at(self, i: int) -> dict[str, torch.Tensor]:
        """The tensors of point ``i`` (parameters and buffers) under the model's own tensor names.

        Read straight from the safetensors file(s) when the file's names are the model's; otherwise (transformers 5
        writes some architectures, e.g. ViT, under legacy names and renames them on load) through the model loader.
        Tensors stored in bfloat16/float16 (``point_dtype``) come back in torch's default dtype (float32), or the
        template's dtype with a template: exactly the stored numbers, and interpolations between points are not
        rounded again.
        """
        state = self._raw_state_at(i)
        if self.template is None and not self._names_match(state):
            return {k: v.detach() for k, v in self.model_at(i).state_dict().items()}
        return state

    def point_fence(self, folder: FsPath) -> FsPath:
        """Where the files of a point's folder may lie once links are followed: the folder itself."""
        return folder

    def checked_point_dir(self, i: int) -> FsPath:
        """The folder of point ``i`` after checking that no file in it leads outside it (a link to another run,
        ``~/.ssh``, or a shard folder elsewhere): what every reader of a point's files opens.

        Raises:
            RunDirectoryError: naming the file and where it leads.
        """
        folder = self.point_dir(i)
        for _ in walk_files(folder, allowed_root=self.point_fence(folder)):
            pass
        return folder

    def point_weight_files(self, i: int) -> list[FsPath]:
        """The safetensors files of point ``i`` (its shards when it has an index), each resolved inside its folder.

        Raises:
            RunDirectoryError: a file or shard resolves outside the point's folder. CorruptCheckpointError: a
                damaged index, or no weights.
        """
        folder = self.checked_point_dir(i)
        files = weight_files(folder, allowed_root=self.point_fence(folder))
        if not files:
            raise RunDirectoryError(f"points[{self._index(i)}] ({folder}): missing, or holds no safetensors weights")
        return files

    def _raw_state_at(self, i: int) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        j = self._index(i)
        folder = self.point_dir(i)
        for f in self.point_weight_files(i):
            try:
                state.update(safetensors.torch.load_file(str(f)))
            except Exception as err:  # SafetensorError, or OSError for a truncated header
                raise CorruptCheckpointError(
                    f"points[{j}] ({f}): not a readable safetensors file ({str(err).splitlines()[0]})"
                ) from None
        for name, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CorruptCheckpointError(f"points[{j}] ({folder}): tensor {name!r} has non-finite values")
        working = self._working_dtype()
        return {k: v.to(working) if v.dtype in _HALF and v.dtype != working else v for k, v in state.items()}

    def _working_dtype(self) -> torch.dtype:
        """The dtype half-precision tensors are read back in: the template's, else torch's default (what timm models
        and transformers models without a dtype in their config are built in)."""
        if self.template is not None:
            own = next((t.dtype for t in self.template.state_dict().values() if t.is_floating_point()), None)
            return own or torch.get_default_dtype()
        return torch.get_default_dtype()

    def _fence(self) -> FsPath:
        """Where files of this path may resolve to (links included): the run directory."""
        return self.root

    def _names_match(self, state: dict[str, torch.Tensor]) -> bool:
        # Decided once per path (every point has the same format) by building one point.
        if self._file_names_are_model_names is None:
            own = set(self.model_at(0).state_dict())
            self._file_names_are_model_names = set(state) <= own
        return self._file_names_are_model_names

    def model_at(self, i: int) -> nn.Module:
        """Point ``i`` as a model in eval mode (built from its folder, or from the template)."""
        if self.template is not None:
            model = copy.deepcopy(self.template)
            model.load_state_dict(self._raw_state_at(i), strict=False)
            return model.eval()
        return self.endpoint_at(i).model

    def endpoint_at(self, i: int) -> Endpoint:
        """Point ``i`` loaded from its folder as an :class:`~hf_llpf.models.endpoints.Endpoint` (its format kept);
        every file it reads resolves inside the folder (:meth:`checked_point_dir`)."""
        folder = self.checked_point_dir(i)
        return load_endpoint(folder, allowed_root=self.point_fence(folder), dtype=self.endpoint_dtype)

    @property
    def endpoint_dtype(self) -> torch.dtype | None:
        """The floating dtype of the endpoints the run recorded (``summary.run.endpoint_dtype``), or ``None``: a
        point stored in ``point_dtype`` names that dtype in its config.json; the run judged it in the endpoints'."""
        own = (self.summary.get("run") or {}).get("endpoint_dtype")
        dtype = getattr(torch, own, None) if isinstance(own, str) else None
        return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None

    def __iter__(self) -> Iterator[nn.Module]:
        for i in range(len(self)):
            yield self.model_at(i)


# The reader's old name, kept for one release: it shadowed pathlib.Path in every module that used both.
Path = RunPath
