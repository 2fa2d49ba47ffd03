"""The card of an exported point (``hf-llpf export``): the path's metadata, tagged ``llpf-point``, with the
point's own figures as its ``model-index``, rendered from ``templates/point_card.md`` like the path's card
(:mod:`hf_llpf.hub.card`)."""

from __future__ import annotations

from pathlib import Path as FsPath

from hf_llpf import __version__
from hf_llpf.hub.card import (
    CARD_TAGS,
    OWN_FIGURES,
    PLACEHOLDER_REPO,
    POINT_TAG,
    POINT_TEMPLATE,
    card_data,
    finite,
    intended_use,
    limitations,
    own_figures_table,
    own_results,
    render_card,
)
from hf_llpf.hub.facts import RunFacts, endpoint_label, read_facts, read_json
from hf_llpf.hub.public import UNKNOWN_LICENSE
from hf_llpf.hub.snippets import point_snippet
from hf_llpf.reporting.report import path_verdict
from hf_llpf.run import METRICS_JSON


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
    """The card of one exported point: the path's metadata (tagged ``llpf-point``), a ``model-index`` of the
    point's own figures, the path's other figures in the text, intended use, limitations and how to load it.

    Args:
        root: the run directory or snapshot of the path (its ``endpoints.json``, settings and summary are read).
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
    summary = read_json(root / METRICS_JSON).get("summary") or {}
    repo = repo_id or PLACEHOLDER_REPO
    intro = _intro(facts, row, index=index, count=count, source=source, reason=reason)
    figures = _figures(facts, row, summary)
    results = own_results(row, facts)
    name = (repo_id or "").split("/")[-1] or f"point-{index}"
    data = card_data(facts, tags=[*CARD_TAGS, POINT_TAG], license=license, model_name=name, results=results)
    return render_card(
        POINT_TEMPLATE,
        data,
        facts,
        title=f"Point {index} (tick {row.get('tick')}) of an LLPF path",
        intro="\n".join(intro),
        figures="\n".join(figures),
        intended_use=intended_use(facts),
        limitations=limitations(facts, summary),
        load_section="\n".join(point_snippet(facts.library, facts.architecture, repo, tokenizer=tokenizer)),
        made_with=f"Made with hf_llpf {__version__}.",
    )


def _intro(facts: RunFacts, row: dict, *, index: int, count: int, source: str, reason: str | None) -> list[str]:
    """The card's opening lines: what the point is, the two endpoints, where the point lies on the path, why it was
    chosen (``reason``, when given) and the data the path was judged on (arguments: see :func:`build_point_card`;
    ``facts``: the path's :class:`~hf_llpf.hub.facts.RunFacts`)."""
    return [
        "A model merged from two endpoints: point "
        f"{index} of {count} of the low-loss path `{source}` (folder `{row.get('point')}`), found with hf_llpf.",
        f"- **A**: {endpoint_label(facts.a)}",
        f"- **B**: {endpoint_label(facts.b)}",
        f"- **point**: index {index}, tick {row.get('tick')}, stage {row.get('stage')}, phase {row.get('phase')}",
        *([f"- **chosen as**: {reason}"] if reason else []),
        "",
        facts.data_line,
    ]


def _figures(facts: RunFacts, row: dict, summary: dict) -> list[str]:
    """The card's figures: the point's own (a table), its other finite records of ``path_metrics.json`` and, for an
    LLPF path, the whole path's verdict against linear interpolation (``summary``: the path's summary)."""
    own = {key for key, *_ in OWN_FIGURES}
    others = [f"| {k} | {v:.4g} |" for k, v in row.items() if finite(v) and k not in ("index", "tick", *own)]
    figures = ["Its own figures:", "", own_figures_table(row, facts, summary)]
    if others:
        figures += ["", "Its other records along the path:", "", "| record | value |", "|---|---|", *others]
    if summary.get("llpf"):  # the whole path's figures against linear interpolation, in one sentence
        figures += ["", f"The path it lies on: **{path_verdict(summary)}**"]
    return figures
