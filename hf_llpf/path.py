"""Paths on disk: the run directory (points, metrics, resume checkpoint) and the :class:`Path` reader.

Run directory (docs/run-directory.md)::

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
from collections.abc import Iterator, Sequence
from pathlib import Path as FsPath
from typing import Any

import safetensors.torch
import torch
import yaml
from torch import nn

from hf_llpf import resume_state
from hf_llpf.errors import CorruptCheckpointError, RunDirectoryError
from hf_llpf.models import Endpoint, load_endpoint, save_model
from hf_llpf.run_lock import LOCK, MARKER, RunLock, check_not_protected, is_run_directory, write_marker
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
    """Writes one run directory (main process only) and holds its lock until :meth:`close`.

    Args:
        root: the run directory.
        exist: what to do when it already exists: ``"error"`` (refuse), ``"overwrite"`` (empty it first; only a
            run directory of this tool, see :mod:`hf_llpf.run_lock`) or ``"resume"`` (keep it).
        protected: folders and files the run reads (local endpoints, data): never deleted or written over.
        lock: take the run directory's lock (not for a phase's folder inside a run directory that holds one).

    Raises:
        RunDirectoryError: ``root`` is a file, under a file, not writable, in use by another run, not a run
            directory while ``overwrite``/``resume`` is asked, or holds a protected path. Nothing is deleted then.
        CorruptCheckpointError: ``resume`` and the checkpoint does not parse.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        exist: str = "error",
        protected: Sequence[os.PathLike] = (),
        lock: bool = True,
    ):
        self.root = FsPath(root)
        check_out_dir(self.root, field="--out")
        protected_paths = [FsPath(p) for p in protected]
        keep_checkpoint = self._check_exist_policy(exist, protected_paths)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.root).acquire() if lock else None
        except OSError as err:
            raise RunDirectoryError(f"--out {str(self.root)!r}: cannot write there ({err.strerror})") from None
        try:
            if exist == "overwrite" or (exist == "resume" and not keep_checkpoint):
                _empty(self.root)  # resume before the first checkpoint: nothing to keep, start again
            _remove_temporary_files(self.root)
            write_marker(self.root)
        except BaseException:
            self.close()
            raise

    def _check_exist_policy(self, exist: str, protected: list[FsPath]) -> bool:
        """Check ``exist`` against what is on disk before anything is changed; True when a checkpoint is kept."""
        if exist not in ("error", "overwrite", "resume", "append"):
            raise RunDirectoryError(f"exist={exist!r}: expected 'error', 'overwrite' or 'resume'")
        occupied = self.root.is_dir() and any(p.name != LOCK for p in self.root.iterdir())
        if exist == "append":  # a phase's own folder inside a resumed run: kept as it is
            return True
        if exist == "resume" and not occupied:
            raise RunDirectoryError(f"cannot resume {str(self.root)!r}: it does not exist or is empty")
        if not occupied:
            return False
        if exist == "error":
            raise RunDirectoryError(
                f"run directory {str(self.root)!r} already exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        check_not_protected(self.root, protected, action="overwrite" if exist == "overwrite" else "resume into")
        if not is_run_directory(self.root):
            found = sorted(p.name for p in self.root.iterdir())[:8]
            raise RunDirectoryError(
                f"--out {str(self.root)!r} is not a run directory of hf_llpf (no {MARKER}; it holds {found}): "
                f"refusing to {exist} it; choose a new or empty folder"
            )
        return exist == "resume" and resume_state.load(self.root / CHECKPOINT_DIR) is not None

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


class NullWriter:
    """What a non-main process gets instead of a :class:`RunWriter`: it writes nothing and holds no lock."""

    root = None

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def check_out_dir(root: FsPath, *, field: str, file: bool = False) -> None:
    """Refuse an output folder (``file``: an output file) that is of the other kind or sits under a file, or whose
    nearest existing parent is not writable, before any work is done."""
    if root.exists() and root.is_dir() == file:
        kind = "a folder, not a file" if file else "a file, not a folder"
        raise RunDirectoryError(f"{field} {str(root)!r} is {kind}; choose another path")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirectoryError(f"{field} {str(root)!r} sits under the file {str(parent)!r}")
            if not os.access(parent, os.W_OK):
                raise RunDirectoryError(f"{field} {str(root)!r}: {str(parent)!r} is not writable")
            break


def _empty(root: FsPath) -> None:
    """Delete everything in a run directory except its lock."""
    for p in root.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _remove_temporary_files(root: FsPath) -> None:
    """Leftovers of writes killed half-way (``.NAME.*.tmp`` files, ``points/.tmp_*`` folders)."""
    for p in sorted(root.rglob(".*"), reverse=True):
        if p.name.startswith(".tmp_") and p.is_dir():
            shutil.rmtree(p)
        elif p.name.endswith(".tmp") and p.is_file():
            p.unlink()


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


def read_run_json(root: str | os.PathLike, name: str, *, kind: type = dict) -> Any:
    """A JSON file of a run directory, refused with its name when it does not parse or is not a ``kind``.

    Raises:
        RunDirectoryError: naming the file, the problem and how the file is made.
    """
    file = FsPath(root) / name
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirectoryError(
            f"{file}: not valid JSON ({type(err).__name__}: {err}); it is written by `hf-llpf connect`"
        ) from None
    if not isinstance(value, kind):
        raise RunDirectoryError(f"{file}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def read_metrics(root: str | os.PathLike) -> dict:
    """``path_metrics.json`` of a run directory, its shape checked (``points``: a list of rows with a tick)."""
    data = read_run_json(root, METRICS_JSON)
    points = data.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("tick"), int) for p in points):
        raise RunDirectoryError(
            f"{FsPath(root) / METRICS_JSON}: 'points' must be a list of rows, each with an integer 'tick'"
        )
    for key, kind in (("ticks", list), ("summary", dict)):
        if not isinstance(data.get(key, kind()), kind):
            raise RunDirectoryError(f"{FsPath(root) / METRICS_JSON}: {key!r} must be a JSON {kind.__name__}")
    return data


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
        """``endpoints.json`` (``A``/``B``: an object each, or null for a walk to the origin)."""
        data = read_run_json(self.root, "endpoints.json")
        for key in ("A", "B"):
            if not isinstance(data.get(key), (dict, type(None))):
                raise RunDirectoryError(f"{self.root / 'endpoints.json'}: {key!r} must be an object (an endpoint)")
        return data

    def validate(self) -> None:
        """Read every metadata file now (endpoints, stages, settings), so a damaged one is refused before any work.

        Raises:
            RunDirectoryError: naming the file and what is wrong with it.
        """
        if (self.root / "endpoints.json").is_file():
            self.endpoints  # noqa: B018 - read for its checks
        self.layer_groups  # noqa: B018
        if (self.root / "llpf_config.yaml").is_file():
            try:
                config = yaml.safe_load((self.root / "llpf_config.yaml").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, yaml.YAMLError) as err:
                raise RunDirectoryError(f"{self.root / 'llpf_config.yaml'}: not valid YAML ({err})") from None
            if not isinstance(config, dict):
                raise RunDirectoryError(f"{self.root / 'llpf_config.yaml'}: expected a mapping of settings")

    @property
    def layer_groups(self) -> dict | None:
        """``layer_groups.json`` (the stage plan), or None when the run directory has none."""
        if not (self.root / "layer_groups.json").is_file():
            return None
        data = read_run_json(self.root, "layer_groups.json")
        stages = data.get("stages")
        if not isinstance(stages, list) or not all(
            isinstance(s, dict) and isinstance(s.get("groups"), list) and all(isinstance(g, dict) for g in s["groups"])
            for s in stages
        ):
            raise RunDirectoryError(
                f"{self.root / 'layer_groups.json'}: 'stages' must be a list of stages, each with a list of 'groups' "
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
        """
        state = self._raw_state_at(i)
        if self.template is None and not self._names_match(state):
            return {k: v.detach() for k, v in self.model_at(i).state_dict().items()}
        return state

    def _raw_state_at(self, i: int) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        folder, j = self.point_dir(i), self._index(i)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise RunDirectoryError(f"points[{j}] ({folder}): missing, or holds no safetensors weights")
        for f in files:
            resolve_inside(folder, f.name, field=f"points[{j}] file", allowed_root=self._fence())
            try:
                state.update(safetensors.torch.load_file(str(f)))
            except Exception as err:  # SafetensorError, or OSError for a truncated header
                raise CorruptCheckpointError(
                    f"points[{j}] ({f}): not a readable safetensors file ({str(err).splitlines()[0]})"
                ) from None
        for name, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CorruptCheckpointError(f"points[{j}] ({folder}): tensor {name!r} has non-finite values")
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


def write_evaluation(root: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write an evaluation's results into a run directory, atomically (docs/evaluation.md, "What is written").

    ``result`` (from :func:`hf_llpf.evaluation.evaluate_path`) is merged into ``root/path_metrics.json``: its
    ``points``, ``linear`` and ``continuity`` replace those there, its ``summary`` sections are merged into the
    summary (the engine's own sections, such as ``run``, are kept), every other key is kept;
    ``path_metrics.csv`` is rewritten from the points.

    Args:
        root: the run directory.
        result: ``{"points", "linear", "continuity", "summary"}``.
    """
    root = FsPath(root)
    existing = read_metrics(root) if (root / METRICS_JSON).is_file() else {}
    merged = {
        **existing,
        "points": result["points"],
        "linear": result["linear"],
        "continuity": result["continuity"],
        "summary": {**existing.get("summary", {}), **result["summary"]},
    }
    atomic_write_text(root / METRICS_JSON, json.dumps(merged, indent=2) + "\n")
    atomic_write_text(root / METRICS_CSV, points_to_csv(result["points"]))
