"""Paths on disk: the run directory (points, metrics, resume checkpoint) and the :class:`Path` reader.

Run directory (``../shared/design.md``)::

    RUN_DIR/
      llpf_config.yaml       the fully resolved settings
      endpoints.json         {"A": {"id", "revision", "kind", "architecture"}, "B": {...}}
      layer_groups.json      the stages and groups used
      path_metrics.json/csv  one row per saved point (+ every tick in the JSON), and the summary
      points/t_000000/       each point in the endpoints' own format (loadable on its own)
      checkpoint/            resume state: state.json + tensors-<n>.safetensors (never published, never unpickled)

Every file is written atomically (a temporary name, then ``os.replace``), so a run killed at any moment
leaves either the old or the new version of each file, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Any

import safetensors.torch
import torch
import yaml
from torch import nn

from hf_llpf import resume_state
from hf_llpf.errors import RunDirectoryError
from hf_llpf.models import Endpoint, load_endpoint, save_model
from hf_llpf.safe_paths import check_relative_name, resolve_inside

POINTS_DIR = "points"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = f"{CHECKPOINT_DIR}/{resume_state.STATE_FILE}"
METRICS_JSON = "path_metrics.json"
METRICS_CSV = "path_metrics.csv"
POINT_COLUMNS = ("index", "tick", "stage", "phase", "train_loss", "sgd_iters", "dist_a", "dist_b", "point")


def point_name(tick: int) -> str:
    """The folder of the point recorded at ``tick``, relative to the run directory."""
    return f"{POINTS_DIR}/t_{tick:06d}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = FsPath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


class RunWriter:
    """Writes one run directory (main process only).

    Args:
        root: the run directory.
        exist: what to do when it already exists: ``"error"`` (refuse), ``"overwrite"`` (delete it first)
            or ``"resume"`` (keep it; a checkpoint must be there).
    """

    def __init__(self, root: str | os.PathLike, *, exist: str = "error"):
        self.root = FsPath(root)
        if self.root.exists() and any(self.root.iterdir()):
            if exist == "error":
                raise RunDirectoryError(
                    f"run directory {str(self.root)!r} already exists; pass --resume to continue it or "
                    "--overwrite to replace it"
                )
            if exist == "overwrite":
                shutil.rmtree(self.root)
            elif exist == "resume" and resume_state.load(self.root / CHECKPOINT_DIR) is None:
                if not (self.root / "llpf_config.yaml").is_file():
                    raise RunDirectoryError(f"cannot resume {str(self.root)!r}: it is not a run directory")
                # Killed before its first checkpoint: nothing to keep, start the run again.
                shutil.rmtree(self.root)
        elif exist == "resume":
            raise RunDirectoryError(f"cannot resume {str(self.root)!r}: it does not exist")
        self.root.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as indented JSON to ``root/name``."""
        atomic_write_text(self.root / name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_yaml(self, name: str, text: str) -> None:
        """Write YAML text to ``root/name``."""
        atomic_write_text(self.root / name, text)

    def write_point(self, tick: int, model: nn.Module, endpoint: Endpoint) -> str:
        """Save ``model`` as the point of ``tick`` in ``endpoint``'s format; returns its relative folder."""
        rel = point_name(tick)
        final = self.root / rel
        tmp = self.root / POINTS_DIR / f".tmp_t_{tick:06d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model, tmp, kind=endpoint.kind, arch=endpoint.arch)
        if final.exists():  # rewritten after a resume: same content, replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        return rel

    def write_metrics(self, points: list[dict], ticks: list[dict], summary: dict | None = None) -> None:
        """Write ``path_metrics.json`` (points, ticks, summary) and ``path_metrics.csv`` (one row per point)."""
        existing = read_metrics(self.root) if (self.root / METRICS_JSON).is_file() else {}
        merged_summary = {**existing.get("summary", {}), **(summary or {})}
        self.write_json(METRICS_JSON, {"points": points, "ticks": ticks, "summary": merged_summary})
        atomic_write_text(self.root / METRICS_CSV, points_to_csv(points))

    def save_checkpoint(self, state: dict) -> None:
        """Write the resume state (safetensors + JSON, see :mod:`hf_llpf.resume_state`); never published."""
        resume_state.save(self.root / CHECKPOINT_DIR, state, write_text=atomic_write_text)


def points_to_csv(points: list[dict]) -> str:
    """One CSV row per point: the fixed columns first, then any evaluation columns in sorted order."""
    extra = sorted({k for p in points for k in p} - set(POINT_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*POINT_COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    for p in points:
        writer.writerow({k: (v if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in p.items()})
    return out.getvalue()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, FsPath):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_metrics(root: str | os.PathLike) -> dict:
    """``path_metrics.json`` of a run directory."""
    return json.loads((FsPath(root) / METRICS_JSON).read_text())


class Path:
    """A path on disk: metrics are read eagerly, points are loaded lazily one at a time.

    ``len(path)`` is the number of saved points; ``path.ticks`` their ticks; ``path.metrics`` one dict
    per point; ``path.model_at(i)`` builds point ``i`` (negative indices count from the end);
    ``path.state_dict_at(i)`` reads only its tensors.

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
        return f"Path({str(self.root)!r}, points={len(self)}, ticks={self.ticks[:1]}..{self.ticks[-1:]})"

    @property
    def ticks(self) -> list[int]:
        """The tick of each saved point."""
        return [int(m["tick"]) for m in self.metrics]

    @property
    def config(self) -> dict:
        """The resolved settings of the run (``llpf_config.yaml``)."""
        return yaml.safe_load((self.root / "llpf_config.yaml").read_text())

    @property
    def endpoints(self) -> dict:
        """``endpoints.json``."""
        return json.loads((self.root / "endpoints.json").read_text())

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
        """
        state = self._raw_state_at(i)
        if self.template is None and not self._names_match(state):
            return {k: v.detach() for k, v in self.model_at(i).state_dict().items()}
        return state

    def _raw_state_at(self, i: int) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        folder = self.point_dir(i)
        for f in sorted(folder.glob("*.safetensors")):
            resolve_inside(folder, f.name, field=f"points[{self._index(i)}] file", allowed_root=self._fence())
            state.update(safetensors.torch.load_file(str(f)))
        return state

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
            import copy

            model = copy.deepcopy(self.template)
            model.load_state_dict(self._raw_state_at(i), strict=False)
            return model.eval()
        return load_endpoint(self.point_dir(i)).model

    def __iter__(self) -> Iterator[nn.Module]:
        for i in range(len(self)):
            yield self.model_at(i)
