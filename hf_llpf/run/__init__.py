"""The run directory behind one interface: its layout, typed rows, the writer, the reader, the lock, the
resume state (docs/run-directory.md).

- :mod:`~hf_llpf.run.layout`: every file and folder name;
- :mod:`~hf_llpf.run.records`: :class:`PointRecord`, :class:`TickRecord` and the CSV columns;
- :mod:`~hf_llpf.run.rundir`: :class:`RunWriter` (exist policy, lock, atomic writes, checkpoints) and
  :class:`NullWriter` for non-main processes;
- :mod:`~hf_llpf.run.reader`: :class:`RunPath`, the lazy reader (``Path``: its old name, kept for one release),
  and the checked JSON readers;
- :mod:`~hf_llpf.run.ownership`: what in a folder this tool wrote (marker, layout, links): what
  ``--overwrite`` may delete and ``--resume`` may continue;
- :mod:`~hf_llpf.run.lock`, :mod:`~hf_llpf.run.state` (safetensors + JSON resume state),
  :mod:`~hf_llpf.run.resume` (what a resume must match);
- :mod:`~hf_llpf.run.storage`: the dtype and shard size points are stored in, and the rounding that makes the
  working model the stored point.

What a run is made from lives here too: :mod:`~hf_llpf.run.inputs` (settings, endpoints, batches and the stage plan
resolved from what a user passes), :mod:`~hf_llpf.run.assets` (the endpoints' companion files every point carries)
and :mod:`~hf_llpf.run.seeding` (every generator seeded, and its state captured for a resume). The one run
preparation that uses them is :mod:`hf_llpf.preparation`.
"""

from hf_llpf.run.layout import (
    CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_YAML,
    ENDPOINTS_JSON,
    LAYER_GROUPS_JSON,
    LOCK,
    MARKER,
    METRICS_CSV,
    METRICS_JSON,
    PLOTS_DIR,
    POINTS_DIR,
    point_name,
)
from hf_llpf.run.reader import Path, RunPath, read_metrics, read_run_json
from hf_llpf.run.records import POINT_COLUMNS, PointRecord, TickRecord, points_to_csv
from hf_llpf.run.rundir import (
    NullWriter,
    RunWriter,
    atomic_write_bytes,
    atomic_write_text,
    check_exist,
    check_out_dir,
    write_evaluation,
)

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_DIR",
    "CONFIG_YAML",
    "ENDPOINTS_JSON",
    "LAYER_GROUPS_JSON",
    "LOCK",
    "MARKER",
    "METRICS_CSV",
    "METRICS_JSON",
    "PLOTS_DIR",
    "POINTS_DIR",
    "POINT_COLUMNS",
    "NullWriter",
    "Path",
    "RunPath",
    "PointRecord",
    "RunWriter",
    "TickRecord",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_exist",
    "check_out_dir",
    "point_name",
    "points_to_csv",
    "read_metrics",
    "read_run_json",
    "write_evaluation",
]
