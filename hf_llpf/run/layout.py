"""The layout of a run directory: the one place that knows its file and folder names (docs/run-directory.md)."""

from __future__ import annotations

CONFIG_YAML = "llpf_config.yaml"  # the fully resolved settings
ENDPOINTS_JSON = "endpoints.json"  # {"A": {...}, "B": {...}, "method", "command", "hf_llpf_version"}
LAYER_GROUPS_JSON = "layer_groups.json"  # the stage plan used
METRICS_JSON = "path_metrics.json"  # points, ticks, summary (and evaluation results)
METRICS_CSV = "path_metrics.csv"  # one row per point
CONSISTENCY_JSON = "consistency.json"  # --repeats: figures across the repeated paths
README = "README.md"  # the model card (also the Hub card)
POINTS_DIR = "points"  # one folder per saved point, in the endpoints' own format
PLOTS_DIR = "plots"
ASSETS_DIR = "assets"  # the endpoints' tokenizer / processor / generation files, once (hf_llpf.run.assets)
ASSETS_MANIFEST = f"{ASSETS_DIR}/manifest.json"  # which files, their sha256, where each came from
CHECKPOINT_DIR = "checkpoint"  # resume state: never published, never unpickled
STATE_FILE = "state.json"  # in CHECKPOINT_DIR, naming its tensors-<n>.safetensors
CHECKPOINT = f"{CHECKPOINT_DIR}/{STATE_FILE}"
MARKER = ".hf_llpf-run"  # this folder is a run directory of hf_llpf (what --overwrite may empty)
LOCK = ".hf_llpf-lock"  # held by the run writing the folder
LOG_FILE = "hf_llpf.log"  # every message of the run, with its time (hf_llpf.reporting.logging.RunLog)
ASIDE = ".m2o_phase"  # a cross-sphere walk of B keeps its points here until they are spliced in, reversed
TRACKER_DIR = "hf_llpf"  # TensorBoard's event files, with report_to: [tensorboard]
BASELINES_DIR = "baselines"  # what `hf-llpf evaluate RUN --baselines ...` writes: one run directory per method
PLOT_FILES = (
    "loss.png",
    "accuracy.png",
    "layers.png",
    "stages.png",
    "repeats.png",
)  # what hf_llpf.reporting.plots draws in PLOTS_DIR
COMPARISON_FILES = ("comparison.json", "comparison.md", "comparison.png")  # hf_llpf.comparison_table
REPEATS_FILES = ("consistency.json", "README.md")  # beside the repeat_NN run directories (hf_llpf.repeats)

# What a run directory of an older version (no marker) may hold; anything else means it is not ours to delete.
RUN_FILES = frozenset(
    {
        README,
        CONFIG_YAML,
        ENDPOINTS_JSON,
        LAYER_GROUPS_JSON,
        METRICS_JSON,
        METRICS_CSV,
        CONSISTENCY_JSON,
        POINTS_DIR,
        PLOTS_DIR,
        ASSETS_DIR,
        CHECKPOINT_DIR,
        MARKER,
        LOCK,
        LOG_FILE,
    }
)


def point_name(tick: int) -> str:
    """The folder of the point recorded at ``tick``, relative to the run directory."""
    return f"{POINTS_DIR}/t_{tick:06d}"


def temporary_point_name(tick: int) -> str:
    """Where a point is written before it is renamed into place (removed when a run directory is opened)."""
    return f"{POINTS_DIR}/.tmp_t_{tick:06d}"


def is_temporary(name: str) -> bool:
    """A leftover of a write killed half-way: ``.tmp_*`` folders and ``.NAME.*.tmp`` files."""
    return name.startswith(".tmp_") or (name.startswith(".") and name.endswith(".tmp"))
