"""The card of an exported point (``hf-llpf export``): the path's metadata, tagged ``llpf-point``, by the same
builder as the path's card (:func:`hf_llpf.hub.card.model_card`)."""

from __future__ import annotations

from pathlib import Path as FsPath

from hf_llpf import __version__
from hf_llpf.hub.card import CARD_TAGS, PLACEHOLDER_REPO, POINT_TAG, finite, model_card
from hf_llpf.hub.facts import endpoint_label, read_facts
from hf_llpf.hub.public import UNKNOWN_LICENSE
from hf_llpf.hub.snippets import point_snippet


def build_point_card(
    root: FsPath,
    row: dict,
    *,
    index: int,
    count: int,
    source: str,
    repo_id: str | None,
    reason: str | None = None,
    license: str = UNKNOWN_LICENSE,
    tokenizer: bool = False,
):
    """The card of one exported point: the path's metadata (tagged ``llpf-point``), its figures, how to load it.

    Args:
        root: the run directory or snapshot of the path (its ``endpoints.json`` and settings are read).
        row: the point's row of ``path_metrics.json``.
        index, count: the point's index and the number of points of the path.
        source: how the path is named in the text (a folder or ``org/repo@commit``).
        repo_id: the repo the point is exported to (used in the loading code); a placeholder when None.
        reason: why this point was chosen (:func:`~hf_llpf.hub.points.choose_point`), said in the card.
        license: the card's ``license``.
        tokenizer: the exported folder carries a tokenizer (its loading line is shown).

    Returns:
        huggingface_hub.ModelCard: the card.
    """
    facts = read_facts(root)
    repo = repo_id or PLACEHOLDER_REPO
    figures = [f"| {k} | {v:.4g} |" for k, v in row.items() if finite(v) and k not in ("index", "tick")]
    lines = [
        f"# Point {index} (tick {row.get('tick')}) of an LLPF path",
        "",
        "A model merged from two endpoints: point "
        f"{index} of {count} of the low-loss path `{source}` (folder `{row.get('point')}`), found with hf_llpf.",
        f"- **A**: {endpoint_label(facts.a)}",
        f"- **B**: {endpoint_label(facts.b)}",
        f"- **point**: index {index}, tick {row.get('tick')}, stage {row.get('stage')}, phase {row.get('phase')}",
        *([f"- **chosen as**: {reason}"] if reason else []),
        "",
        "| figure | value |",
        "|---|---|",
        *figures,
        "",
        "## Load",
        "",
        *point_snippet(facts.library, facts.architecture, repo, tokenizer=tokenizer),
        "",
        f"Made with hf_llpf {__version__}.",
    ]
    return model_card(facts, lines, tags=[*CARD_TAGS, POINT_TAG], license=license)
