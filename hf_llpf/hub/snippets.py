"""The "load it" code of the model cards, true for the endpoints' library.

Every snippet uses the library alone (no hf_llpf), except where the architecture is one of hf_llpf's
built-in ones, which timm only knows once ``hf_llpf.zoo`` has registered them. What each snippet does is
checked by the Hub tests (``tests/hub_plain_load.py``): the root with ``from_pretrained("org/path")`` /
``timm.create_model("hf-hub:org/path")``, a point by ``subfolder=`` (transformers) or by downloading its
folder and ``local-dir:`` (timm, which has no ``subfolder``), and a point branch by ``revision=`` /
``hf-hub:org/path@t_000010`` when the points were published as revisions.
"""

from __future__ import annotations

_AUTO_CLASSES = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForImageClassification", "AutoModelForImageClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
)


def auto_class(architecture: str) -> str:
    """The transformers Auto class that loads ``architecture`` (``AutoModel`` when none fits)."""
    return next((auto for suffix, auto in _AUTO_CLASSES if architecture.endswith(suffix)), "AutoModel")


def _builtin(architecture: str) -> bool:
    from hf_llpf.zoo import BUILTIN_MODELS

    return architecture in BUILTIN_MODELS


def root_load(library: str | None, architecture: str, repo: str, *, revision: str | None = None) -> str:
    """The one expression that loads the model at the root of ``repo`` (of branch ``revision`` when given)."""
    if library == "transformers":
        where = f', revision="{revision}"' if revision else ""
        return f'{auto_class(architecture)}.from_pretrained("{repo}"{where})'
    at = f"@{revision}" if revision else ""
    if library == "timm":
        return f'timm.create_model("hf-hub:{repo}{at}", pretrained=True)'
    return f'hf_llpf.models.endpoints.load_endpoint("{repo}{at}").model'


def path_snippet(
    library: str | None,
    architecture: str,
    repo: str,
    *,
    point: str,
    revisions: bool,
    tokenizer: bool = False,
    branch: str | None = None,
) -> list[str]:
    """The card's "Load a point" code for a published path: the root, one point, any point with hf_llpf.

    Args:
        library: ``"transformers"``, ``"timm"`` or None (hf_llpf only).
        architecture: the endpoints' architecture (a transformers class or a timm model name).
        repo: the repo id.
        point: a point folder to show (``points/t_000010``).
        revisions: whether every published point also has its own branch (named like its folder).
        tokenizer: the points carry a tokenizer (hf_llpf.run.assets): show how to load it.
        branch: the point branch the card is for: its root line loads that revision (None: main's root).
    """
    root = "the model at the root of this branch" if branch else "the model at the root (see above)"
    lines: list[str] = []
    if library == "transformers":
        lines += _transformers_block(
            architecture, repo, point=point, root=root, revisions=revisions, tokenizer=tokenizer, branch=branch
        )
    elif library == "timm":
        lines += _timm_block(architecture, repo, point=point, root=root, revisions=revisions, branch=branch)
    lines += [
        "",
        "Every point, with its figures, through hf_llpf:",
        "",
        "```python",
        "from hf_llpf.hub import load_path",
        f'path = load_path("{repo}")  # metrics now, each point when first used',
        "model = path.model_at(len(path) // 2)",
        "```",
    ]
    return lines


def _transformers_block(
    architecture: str, repo: str, *, point: str, root: str, revisions: bool, tokenizer: bool, branch: str | None
) -> list[str]:
    """The transformers code block of :func:`path_snippet` (same arguments; ``root`` says which model the root line
    loads): the root, the point by ``subfolder=`` and, on main's card with ``revisions``, by its branch; the
    tokenizer when the points carry one."""
    auto = auto_class(architecture)
    lines = [
        "```python",
        f"from transformers import {auto}",
        f"model = {root_load('transformers', architecture, repo, revision=branch)}  # {root}",
        f'point = {auto}.from_pretrained("{repo}", subfolder="{point}")  # any point: its folder',
    ]
    if revisions and not branch:
        example = point.rsplit("/", 1)[-1]
        lines.append(f'point = {auto}.from_pretrained("{repo}", revision="{example}")  # or its branch')
    if tokenizer:
        where = f'revision="{branch}"' if branch else f'subfolder="{point}"'
        lines += [
            "",
            "from transformers import AutoTokenizer  # every point and the root carry the tokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}", {where})',
        ]
    return [*lines, "```"]


def _timm_block(
    architecture: str, repo: str, *, point: str, root: str, revisions: bool, branch: str | None
) -> list[str]:
    """The timm code block of :func:`path_snippet` (same arguments; ``root`` says which model the root line loads):
    the root, the point downloaded and loaded from disk (timm has no ``subfolder``) and, on main's card with
    ``revisions``, by its branch."""
    lines = ["```python", "import timm"]
    if _builtin(architecture):
        lines.append(f"import hf_llpf.zoo  # registers the built-in architecture {architecture!r} with timm")
    lines += [
        f"model = {root_load('timm', architecture, repo, revision=branch)}  # {root}",
        "",
        "# any point: timm has no subfolder argument, so download the point's folder and load it from disk",
        "from huggingface_hub import snapshot_download",
        f'folder = snapshot_download("{repo}", allow_patterns=["{point}/*"])',
        f'point = timm.create_model(f"local-dir:{{folder}}/{point}", pretrained=True)',
    ]
    if revisions and not branch:
        example = point.rsplit("/", 1)[-1]
        lines.append(f'point = timm.create_model("hf-hub:{repo}@{example}", pretrained=True)  # or its branch')
    return [*lines, "```"]


def point_snippet(library: str | None, architecture: str, repo: str, *, tokenizer: bool = False) -> list[str]:
    """The "Load" code of an exported point (a whole repo of its own; ``tokenizer``: it carries one)."""
    if library == "timm":
        lines = ["import timm"]
        if _builtin(architecture):
            lines.append(f"import hf_llpf.zoo  # registers the built-in architecture {architecture!r} with timm")
        lines.append(f'model = timm.create_model("hf-hub:{repo}", pretrained=True)')
    elif library == "transformers":
        auto = auto_class(architecture)
        lines = [f"from transformers import {auto}", f'model = {auto}.from_pretrained("{repo}")']
        if tokenizer:
            lines += ["from transformers import AutoTokenizer", f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
    else:
        lines = ["from hf_llpf.models.endpoints import load_endpoint", f'model = load_endpoint("{repo}").model']
    return ["```python", *lines, "```"]


__all__ = ["auto_class", "path_snippet", "point_snippet", "root_load"]
