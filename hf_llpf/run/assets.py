"""Companion files of the endpoints (tokenizer, image processor, generation config): collected, checked, kept.

A model folder is more than weights and ``config.json``: ``AutoTokenizer``, ``AutoImageProcessor``,
``pipeline(...)`` and ``generate`` read the files listed in :data:`ASSET_KINDS`. At connect time they are
collected from both endpoints (a local folder, or a Hub repo at the endpoint's pinned commit), compared file by
file (sha256 of the bytes), and stored once in the run directory's ``assets/`` folder; publishing and export
copy them into every published point, the repo root and the exported folder (docs/hub.md, "What travels with a
point").

Rules (why):

- Only the file names of :data:`ASSET_KINDS` are read: an allow-list, so no weights, no pickle, no Python code
  (``tokenization_*.py``) is ever copied; nothing is executed, and tokenizers load with ``trust_remote_code=False``.
- The tokenizer that travels is the one the run tokenized its data with: ``data.tokenizer`` when it was given
  (the endpoints' own tokenizers are then not published), else endpoint A's.
- Tokenizer files that differ between A and B are loaded and compared (vocabulary, special tokens, encodings):
  tokenizers that read text differently are an error (a path between two models that disagree on token ids is
  not a path between comparable models); files that differ in their bytes only (another ``transformers``
  version wrote them) are a warning, and A's are kept.
- Other files that differ (image processor, generation config) are a warning, A's are kept: the points are saved
  in A's format and A's settings are the reference; each difference is recorded in ``assets/manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from hf_llpf.errors import CorruptCheckpointError, DataMismatchError
from hf_llpf.files.partial import cleaned_on_failure
from hf_llpf.files.safe_paths import resolve_inside
from hf_llpf.files.textfiles import check_kind, parse_json
from hf_llpf.run.layout import ASSETS_DIR, ASSETS_MANIFEST

logger = get_logger(__name__)

TOKENIZER = "tokenizer"
# What ``save_pretrained`` of a tokenizer / processor / generation config writes (transformers 5), by kind.
ASSET_KINDS: dict[str, str] = {
    **{
        name: TOKENIZER
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
            "spiece.model",
            "sentencepiece.bpe.model",
            "sentencepiece.model",
            "tokenizer.model",
            "spm.model",
            "source.spm",
            "target.spm",
            "target_vocab.json",
            "chat_template.jinja",
            "chat_template.json",
        )
    },
    "preprocessor_config.json": "processor",
    "processor_config.json": "processor",
    "video_preprocessor_config.json": "processor",
    "generation_config.json": "generation",
}
MAX_ASSET_BYTES = 64 << 20  # a tokenizer file is a few MB; anything larger is not a companion file
_PROBE_TEXTS = ("Hello world, this is a test.", "The quick brown fox jumps over the lazy dog 1234!", "éàü ß 你好")


@dataclass
class Assets:
    """The companion files of a run: name -> bytes, where each came from, and the differences found.

    Attributes:
        files: file name (see :data:`ASSET_KINDS`) -> content.
        origin: file name -> ``"A and B"`` (the same in both), ``"A"``, ``"B"``, ``"data.tokenizer"`` or
            ``"the run's tokenizer"`` (a tokenizer object given from Python, saved with ``save_pretrained``).
        notes: one line per difference or gap, for the manifest and the log.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """What ``assets/manifest.json`` records (no path of this machine: origins are labels)."""
        files = {
            name: {"kind": ASSET_KINDS[name], "sha256": _sha(data), "bytes": len(data), "from": self.origin[name]}
            for name, data in sorted(self.files.items())
        }
        return {"files": files, "notes": list(self.notes)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def collect_folder(folder: str | os.PathLike, *, fence: str | os.PathLike | None = None) -> dict[str, bytes]:
    """The companion files lying directly in ``folder`` (the allow-list of :data:`ASSET_KINDS` only).

    Args:
        folder: a model folder (or a Hub snapshot folder).
        fence: where links may point (a Hub snapshot's files link into the repo's blob store); default ``folder``.

    Raises:
        DataMismatchError: a companion file is larger than :data:`MAX_ASSET_BYTES`.
        RunDirectoryError: a companion file is a link leaving ``fence``.
    """
    folder = Path(folder)
    found = {}
    for name in ASSET_KINDS:
        path = resolve_inside(folder, name, field="companion file", allowed_root=Path(fence or folder))
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size > MAX_ASSET_BYTES:
            raise DataMismatchError(
                f"{name} in {folder} is {size} bytes, over the {MAX_ASSET_BYTES} bytes a companion file may have"
            )
        found[name] = path.read_bytes()
    return found


def _hub_folder(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of the companion files of a Hub model (downloaded, or from the local cache)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(ASSET_KINDS)))


def endpoint_files(endpoint: Any, *, label: str) -> dict[str, bytes]:
    """The companion files of an endpoint: its local folder's, or its Hub repo's at the pinned commit.

    An endpoint with no folder (a module, a timm name, a bare safetensors file) has none. A Hub repo whose
    files cannot be fetched now (offline, not cached) gives none, with a warning: the run does not depend on them.
    """
    source = str(getattr(endpoint, "source", "") or "")
    if not source or source.startswith("<") or source.endswith(".safetensors"):
        return {}
    if Path(source).is_dir():
        return collect_folder(source)
    if Path(source).exists() or "/" not in source:
        return {}
    repo_id, _, rev = source.partition("@")
    return _hub_files(repo_id, getattr(endpoint, "revision", None) or rev or None, what=f"endpoint {label} ({source})")


def _hub_files(repo_id: str, revision: str | None, *, what: str) -> dict[str, bytes]:
    """The companion files of a Hub repo; none (with a warning) when they cannot be fetched now."""
    try:
        folder = _hub_folder(repo_id, revision)
    except Exception as err:  # offline, not cached, no such repo: the weights were read, the companions are extra
        first = str(err).splitlines()[0][:160] if str(err) else ""
        logger.warning(
            f"{what}: its tokenizer / processor / generation files could not be fetched ({type(err).__name__}: "
            f"{first}); points are published without them",
            main_process_only=True,
        )
        return {}
    return collect_folder(folder, fence=folder.parent.parent)  # models--org--name/{snapshots/<sha>,blobs}


def tokenizer_files(spec: str | None, tokenizer: Any = None) -> dict[str, bytes]:
    """The files of the tokenizer a run used: ``spec`` (a folder or Hub id ``org/name[@rev]``), else the
    ``tokenizer`` object as its ``save_pretrained`` writes it."""
    if spec is not None and Path(spec).is_dir():
        return {k: v for k, v in collect_folder(spec).items() if ASSET_KINDS[k] == TOKENIZER}
    if spec is not None and not Path(spec).exists():
        repo_id, _, rev = spec.partition("@")
        files = _hub_files(repo_id, rev or None, what=f"data.tokenizer ({spec})")
        return {k: v for k, v in files.items() if ASSET_KINDS[k] == TOKENIZER}
    if tokenizer is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {k: v for k, v in collect_folder(tmp).items() if ASSET_KINDS[k] == TOKENIZER}


def _load_tokenizer(files: dict[str, bytes]) -> Any:
    """A tokenizer from its files alone (a temporary folder; no remote code)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def _check_tokenizers(a: dict[str, bytes], b: dict[str, bytes], differ: list[str], labels: tuple[str, str]) -> None:
    """Tokenizer files that differ in bytes: an error when the tokenizers read text differently."""
    from hf_llpf.data.tokenizer import check_same_tokenizer

    names = ", ".join(differ)
    try:
        check_same_tokenizer(_load_tokenizer(a), _load_tokenizer(b), texts=list(_PROBE_TEXTS))
    except DataMismatchError as err:
        raise DataMismatchError(
            f"the tokenizer files of endpoint A ({labels[0]}) and endpoint B ({labels[1]}) differ ({names}) and the "
            f"tokenizers read text differently: {err}. A path's points share one tokenizer: connect endpoints "
            "fine-tuned with the same tokenizer, or pass data.tokenizer=<folder or Hub id> to name the one the run "
            "uses and publishes"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as err:  # files that do not load as a tokenizer
        raise DataMismatchError(
            f"the tokenizer files of endpoint A ({labels[0]}) and endpoint B ({labels[1]}) differ ({names}) and "
            f"could not be compared ({type(err).__name__}: {str(err).splitlines()[0][:160]}); pass "
            "data.tokenizer=<folder or Hub id> to name the tokenizer the run uses and publishes"
        ) from None


def _same(name: str, a: bytes, b: bytes) -> bool:
    """Whether two endpoints' files of one name are the same file: equal bytes, or, for ``tokenizer.json``, equal up
    to the call state a fine-tune leaves in it (the truncation it was last called with)."""
    if a == b:
        return True
    if name != "tokenizer.json":
        return False
    from hf_llpf.data.tokenizer import without_call_state

    clean_a = without_call_state(a)
    return clean_a is not None and clean_a == without_call_state(b)


def merge_assets(
    a: dict[str, bytes], b: dict[str, bytes], *, labels: tuple[str, str], tokenizer: dict[str, bytes] | None = None,
    tokenizer_origin: str = "data.tokenizer",
) -> Assets:  # fmt: skip
    """The files that travel with the points, from endpoint A's and B's (see the module docstring for the rules).

    Args:
        a, b: the endpoints' companion files (:func:`endpoint_files`).
        labels: how to name A and B in messages (their sources).
        tokenizer: the files of the tokenizer the run was given (``data.tokenizer``): they replace the
            endpoints' tokenizer files, which are then not compared.
        tokenizer_origin: how the manifest names where ``tokenizer`` came from.

    Raises:
        DataMismatchError: A's and B's tokenizer files differ and the tokenizers read text differently.
    """
    out = Assets()
    if tokenizer is not None:
        a, b = ({k: v for k, v in d.items() if ASSET_KINDS[k] != TOKENIZER} for d in (a, b))
        out.files.update(tokenizer)
        out.origin.update(dict.fromkeys(tokenizer, tokenizer_origin))
    tok_differ = sorted(k for k in a.keys() & b.keys() if ASSET_KINDS[k] == TOKENIZER and not _same(k, a[k], b[k]))
    if tok_differ:
        _check_tokenizers(*({k: v for k, v in d.items() if ASSET_KINDS[k] == TOKENIZER} for d in (a, b)),
                          tok_differ, labels)  # fmt: skip
    for name in sorted(a.keys() | b.keys()):
        if name in a and name in b:
            same = _same(name, a[name], b[name])
            out.files[name], out.origin[name] = a[name], "A and B" if same else "A"
            if not same:
                tok = ASSET_KINDS[name] == TOKENIZER
                why = "the tokenizers read text the same way" if tok else "A is the reference"
                out.notes.append(f"{name} differs between endpoint A and endpoint B: A's is kept ({why})")
        else:
            side = "A" if name in a else "B"
            out.files[name], out.origin[name] = (a if name in a else b)[name], side
            out.notes.append(f"{name} is only in endpoint {side}'s folder: {side}'s is kept")
    for note in out.notes:
        logger.warning(f"{note} (A: {labels[0]}, B: {labels[1]})", main_process_only=True)
    return out


def run_assets(ea: Any, eb: Any = None, bundle: Any = None, *, keep_auto_map: bool = False) -> Assets:
    """The companion files of a run: the endpoints' (:func:`merge_assets`), with the run's own tokenizer when it
    was not endpoint A's (``data.tokenizer``, or a tokenizer object in a text bundle given from Python).

    Unless ``keep_auto_map``, the pointers to code in other repos (``auto_map``, :mod:`hf_llpf.models.remote_code`) are
    removed from the files, as the point writer removes them from each point's ``config.json``; one log line names
    what the endpoints carried.

    Raises:
        DataMismatchError: see :func:`merge_assets`.
    """
    from hf_llpf.data.tokenizer import tokenizer_spec

    a = endpoint_files(ea, label="A")
    b = endpoint_files(eb, label="B") if eb is not None else {}
    labels = (str(ea.source), str(eb.source) if eb is not None else "none")
    tokenizer, origin = None, "data.tokenizer"
    if getattr(bundle, "tokenizer", None) is not None:
        spec = bundle.config.tokenizer
        if spec is None:
            tokenizer, origin = tokenizer_files(None, bundle.tokenizer), "the run's tokenizer"
        elif spec != tokenizer_spec(ea):
            tokenizer = tokenizer_files(spec)
    assets = merge_assets(a, b, labels=labels, tokenizer=tokenizer, tokenizer_origin=origin)
    if getattr(bundle, "task", None) == "image" and "preprocessor_config.json" in assets.files:
        _check_processor(assets, bundle)
    if not keep_auto_map:
        _strip_remote_code(assets, ea, eb)
    return assets


def _strip_remote_code(assets: Assets, ea: Any, eb: Any) -> None:
    """Remove the remote-code pointers from the companion files; log one line for them and the endpoints' configs
    (whose copies in the points the point writer strips)."""
    from hf_llpf.models.remote_code import carried, removed_note, strip_files

    files, found = strip_files(assets.files)
    assets.files.update(files)
    for label, ep in (("A", ea), ("B", eb)):
        if getattr(ep, "kind", None) == "transformers" and carried(getattr(ep, "arch", None) or {}):
            found[f"endpoint {label}'s config.json (in every point)"] = carried(ep.arch)
    if found:
        what = "what this run writes"
        logger.warning(removed_note({k if " " in k else f"{ASSETS_DIR}/{k}": v for k, v in found.items()},
                                    what=what), main_process_only=True)  # fmt: skip


def _check_processor(assets: Assets, bundle: Any) -> None:
    """Note (and warn) when the image processor that travels describes other inputs than the run's data.

    The processor is the endpoint's, published as it is: a user of a point would feed it images prepared that
    way, while the points were trained on the run's (``data.image_size``, ``data.mean``, ``data.std``).
    """
    proc = _read_processor(assets)
    channels, height, width = bundle.input_shape
    data = bundle.config
    ours = {
        "image_mean": [round(float(v), 4) for v in data.mean] * (channels if len(data.mean) == 1 else 1),
        "image_std": [round(float(v), 4) for v in data.std] * (channels if len(data.std) == 1 else 1),
    }
    found = []
    for key, value in ours.items():
        theirs = proc.get(key)
        if isinstance(theirs, list) and [round(float(v), 4) for v in theirs] != value:
            found.append(f"{key} {theirs} (the run's data: {value})")
    size = proc.get("size") if isinstance(proc.get("size"), dict) else {}
    if {"height", "width"} <= set(size) and (size["height"], size["width"]) != (height, width):
        found.append(f"size {size['height']}x{size['width']} (the run's data: {height}x{width})")
    if found:
        note = ("preprocessor_config.json (the endpoint's, published as it is) describes other inputs than the run's "
                f"data: {'; '.join(found)}")  # fmt: skip
        assets.notes.append(note)
        logger.warning(note, main_process_only=True)


def _read_processor(assets: Assets) -> dict:
    """The image processor's settings, refused by name when they do not parse or have other types than a processor's
    (it would be published with every point)."""
    where = f"preprocessor_config.json (endpoint {assets.origin.get('preprocessor_config.json', 'A')})"
    proc = parse_json(assets.files["preprocessor_config.json"], where=where, error=CorruptCheckpointError)
    for key in ("image_mean", "image_std"):
        value = proc.get(key)
        if value is not None and not isinstance(value, (int, float)):
            check_kind(value, kind=list, where=f"{where}: {key}", error=CorruptCheckpointError)
            for v in value:
                check_kind(v, kind=(int, float), where=f"{where}: {key} entry", error=CorruptCheckpointError)
    size = proc.get("size")
    if isinstance(size, dict):
        for key in ("height", "width", "shortest_edge"):
            if key in size:
                check_kind(size[key], kind=int, where=f"{where}: size.{key}", error=CorruptCheckpointError)
    return proc


def write_assets(root: str | os.PathLike, assets: Assets) -> None:
    """Store the assets in ``root/assets/`` (with ``manifest.json``), the folder appearing whole or not at all.

    Nothing is written when there are no files and no folder yet (a run of plain modules).
    """
    root = Path(root)
    final = resolve_inside(root, ASSETS_DIR, field="assets folder")
    if not assets.files and not final.exists():
        return
    tmp = resolve_inside(root, f".tmp_{ASSETS_DIR}", field="assets folder")  # removed when a run dir is opened
    if tmp.exists():
        shutil.rmtree(tmp)
    with cleaned_on_failure(tmp):  # a failed write (a full disk) leaves no temporary folder behind
        tmp.mkdir()
        for name, data in assets.files.items():
            (tmp / name).write_bytes(data)
        (tmp / Path(ASSETS_MANIFEST).name).write_text(json.dumps(assets.manifest(), indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def read_assets(root: str | os.PathLike, *, fence: str | os.PathLike | None = None) -> dict[str, Path]:
    """The companion files stored in a run directory: name -> file (none when it has no ``assets/``).

    Only names of :data:`ASSET_KINDS` are returned, each resolved inside the run directory.
    """
    root = Path(root)
    folder = resolve_inside(root, ASSETS_DIR, field="assets folder", allowed_root=Path(fence or root))
    if not folder.is_dir():
        return {}
    out = {}
    for name in ASSET_KINDS:
        path = resolve_inside(root, f"{ASSETS_DIR}/{name}", field="assets file", allowed_root=Path(fence or root))
        if path.is_file():
            out[name] = path
    return out


def with_assets(files: dict[str, Path], assets: dict[str, Path]) -> dict[str, Path]:
    """A point's files (relative name -> file) with the run's companion files added; the point's own win.

    A point's own file of that name (``generation_config.json`` that ``save_pretrained`` wrote from the point's
    model) is the point's, so it is kept.
    """
    return {**assets, **files}


__all__ = [
    "ASSET_KINDS",
    "Assets",
    "collect_folder",
    "endpoint_files",
    "merge_assets",
    "read_assets",
    "run_assets",
    "tokenizer_files",
    "with_assets",
    "write_assets",
]
