"""A plain-library user of a published path: ``python hub_plain_load.py CFG_JSON`` (run by ``hub_round_trip.py``).

It never imports hf_llpf (checked at the end): it loads what the model card promises with transformers,
timm and huggingface_hub alone, from the local olah server (``HF_ENDPOINT``), and writes, per step, the
weights' digest (or the error) and the card's metadata to ``cfg["plain_results"]``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from pathlib import Path


def digest(state: dict) -> str:
    """The same digest as ``hub_fixtures.state_digest`` (copied: that module imports hf_llpf)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def step(out: dict, name: str, fn) -> None:
    try:
        out[name] = fn()
    except Exception as err:
        out[name] = {"error": type(err).__name__, "message": str(err), "trace": traceback.format_exc()}


def transformers_root(repo: str) -> str:
    from transformers import AutoModelForSequenceClassification

    return digest(AutoModelForSequenceClassification.from_pretrained(repo).state_dict())


def transformers_point(repo: str, point: str) -> str:
    from transformers import AutoModelForSequenceClassification

    return digest(AutoModelForSequenceClassification.from_pretrained(repo, subfolder=point).state_dict())


def transformers_revision(repo: str, revision: str) -> str:
    from transformers import AutoModelForSequenceClassification

    return digest(AutoModelForSequenceClassification.from_pretrained(repo, revision=revision).state_dict())


def timm_revision(repo: str, revision: str) -> str:
    import timm

    return digest(timm.create_model(f"hf-hub:{repo}@{revision}", pretrained=True).state_dict())


def timm_root(repo: str) -> str:
    import timm

    return digest(timm.create_model(f"hf-hub:{repo}", pretrained=True).state_dict())


def timm_point(repo: str, point: str) -> dict:
    """The card's recipe: download the point's folder only, then ``local-dir:``."""
    import timm
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo, allow_patterns=[f"{point}/*"])
    # The snapshot folder is shared by every download of that commit: list what lies in the point's folder.
    files = sorted(p.relative_to(folder).as_posix() for p in (Path(folder) / point).rglob("*") if p.is_file())
    model = timm.create_model(f"local-dir:{folder}/{point}", pretrained=True)
    return {"digest": digest(model.state_dict()), "files": files}


TEXT = "good great film"


def tokenizer_ids(repo: str, **where) -> list[int]:
    """The published tokenizer's ids for :data:`TEXT` (root, ``subfolder=`` or ``revision=``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(repo, **where)(TEXT)["input_ids"]


def text_pipeline(repo: str, **where) -> dict:
    """``pipeline("text-classification")`` on the published model and tokenizer, and the weights' digest."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    if not where:  # the plainest form: the repo id alone
        classify = pipeline("text-classification", model=repo)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(repo, **where)
        classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(repo, **where))
    got = classify(TEXT)[0]
    return {"label": got["label"], "score": float(got["score"]), "digest": digest(classify.model.state_dict())}


def timm_data(repo: str, revision: str | None = None, point: str | None = None) -> dict:
    """timm's data config of the published model, and its config.json's pretrained_cfg keys."""
    import timm
    from huggingface_hub import hf_hub_download, snapshot_download

    if point is not None:
        folder = snapshot_download(repo, allow_patterns=[f"{point}/*"])
        model = timm.create_model(f"local-dir:{folder}/{point}", pretrained=True)
        config = json.loads((Path(folder) / point / "config.json").read_text())
    else:
        model = timm.create_model(f"hf-hub:{repo}" + (f"@{revision}" if revision else ""), pretrained=True)
        config = json.loads(Path(hf_hub_download(repo, "config.json", revision=revision)).read_text())
    data = timm.data.resolve_data_config(model=model)
    return {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
            "keys": sorted(config["pretrained_cfg"]), "num_classes": model.num_classes}  # fmt: skip


def card(repo: str) -> dict:
    from huggingface_hub import ModelCard

    c = ModelCard.load(repo)
    return {
        "license": c.data.license,
        "pipeline_tag": c.data.pipeline_tag,
        "library_name": c.data.library_name,
        "base_model": c.data.base_model,
        "relation": c.data.get("base_model_relation"),
        "results": [
            {
                "name": r.metric_name,
                "type": r.metric_type,
                "value": r.metric_value,
                "dataset": r.dataset_name,
                "split": r.dataset_split,
            }
            for r in (c.data.eval_results or [])
        ],
        "text": c.text,
    }


def main(cfg_file: str) -> None:
    cfg = json.loads(Path(cfg_file).read_text())
    out: dict = {}
    bert, timm_repo, point = cfg["plain_bert_repo"], cfg["plain_timm_repo"], cfg["plain_point"]
    step(out, "transformers_root", lambda: transformers_root(bert))
    step(out, "transformers_point", lambda: transformers_point(bert, point))
    step(out, "timm_root", lambda: timm_root(timm_repo))
    step(out, "timm_point", lambda: timm_point(timm_repo, point))
    rev_repo, rev = cfg["plain_bert_rev_repo"], cfg["plain_revision"]
    step(out, "transformers_revision", lambda: transformers_revision(rev_repo, rev))
    step(out, "timm_revision", lambda: timm_revision(timm_repo, rev))
    step(out, "tokenizer_root", lambda: tokenizer_ids(bert))
    step(out, "tokenizer_point", lambda: tokenizer_ids(bert, subfolder=point))
    step(out, "tokenizer_revision", lambda: tokenizer_ids(rev_repo, revision=rev))
    step(out, "pipeline_root", lambda: text_pipeline(bert))
    step(out, "pipeline_point", lambda: text_pipeline(bert, subfolder=point))
    step(out, "pipeline_revision", lambda: text_pipeline(rev_repo, revision=rev))
    step(out, "timm_data_root", lambda: timm_data(timm_repo))
    step(out, "timm_data_point", lambda: timm_data(timm_repo, point=point))
    step(out, "timm_data_revision", lambda: timm_data(timm_repo, revision=rev))
    step(out, "timm_card", lambda: card(timm_repo))
    step(out, "bert_card", lambda: card(bert))
    out["hf_llpf_imported"] = any(m == "hf_llpf" or m.startswith("hf_llpf.") for m in sys.modules)
    Path(cfg["plain_results"]).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
