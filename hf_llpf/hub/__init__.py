"""Publish a run directory as a Hub model repo, load one back, and export any point as a merged model.

This package is the only part of hf_llpf that talks to the Hugging Face Hub for paths, and it does so
with huggingface_hub's own pieces (``validate_repo_id``, ``create_commit``, ``snapshot_download``,
``ModelCard``/``ModelCardData``/``EvalResult``); see ``docs/hub.md``.

- :func:`push_path` (:mod:`~hf_llpf.hub.push`) uploads a run directory (points, metrics, plots, config,
  card; never the resume checkpoint) plus a complete model at the repo root, in batches of commits that a
  re-run resumes (:mod:`~hf_llpf.hub.upload`), then tags the last commit ``llpf-<content hash>`` so a path
  version can be cited and loaded exactly. Pushing unchanged content again makes no commit and no tag.
  Nothing published names a path of the machine (:mod:`~hf_llpf.hub.public`).
- :func:`load_path` (:mod:`~hf_llpf.hub.load`) returns the same :class:`~hf_llpf.run.RunPath` as a local
  run: metrics, config and card are downloaded at once, each point's folder only when it is first used,
  and only safetensors weights.
- :func:`export_point` (:mod:`~hf_llpf.hub.export`) writes one point as a standalone model in the
  endpoints' format with its own card.
- :func:`build_model_card` (:mod:`~hf_llpf.hub.card`) builds ``RUN_DIR/README.md`` from a ``ModelCard``
  template by the Hub's conventions (``license``, ``pipeline_tag``, ``base_model: [A, B]`` with relation
  ``merge``, a ``model-index`` of the root model's own figures with dataset and split; the path's figures and
  verdict, intended use and limitations in the text), from the run's facts (:mod:`~hf_llpf.hub.facts`).
- :func:`choose_point` / :func:`select_points` (:mod:`~hf_llpf.hub.points`) name one point (``mid``,
  ``best``, ...) or the published subset.
- :func:`parse_repo_spec` (:mod:`~hf_llpf.hub_client.repo_ids`) is the one parser of ``org/name[@revision]``.
"""

from hf_llpf.hub.card import CARD_TAGS, REPORT_END, REPORT_START, build_model_card
from hf_llpf.hub.export import export_point
from hf_llpf.hub.files import IGNORE_PATTERNS, content_hash, publishable_files
from hf_llpf.hub.load import EAGER_PATTERNS, POINT_FILE_PATTERNS, UNSAFE_WEIGHTS, HubPath, load_path
from hf_llpf.hub.point_card import build_point_card
from hf_llpf.hub.points import arc_positions, choose_point, select_point, select_points
from hf_llpf.hub.push import TAG_PREFIX, push_path
from hf_llpf.hub_client.access import HubAuthError
from hf_llpf.hub_client.repo_ids import REPO_ID_FORM, check_branch_name, is_repo_id, parse_repo_spec

__all__ = [
    "CARD_TAGS",
    "EAGER_PATTERNS",
    "IGNORE_PATTERNS",
    "POINT_FILE_PATTERNS",
    "REPORT_END",
    "REPORT_START",
    "REPO_ID_FORM",
    "TAG_PREFIX",
    "UNSAFE_WEIGHTS",
    "HubAuthError",
    "HubPath",
    "arc_positions",
    "build_model_card",
    "build_point_card",
    "check_branch_name",
    "choose_point",
    "content_hash",
    "export_point",
    "is_repo_id",
    "load_path",
    "parse_repo_spec",
    "publishable_files",
    "push_path",
    "select_point",
    "select_points",
]
