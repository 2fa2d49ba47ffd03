"""The Hub round trip of ``test_hub.py``, run as its own program: ``python hub_round_trip.py CFG_JSON``.

It runs in a subprocess with its own environment because huggingface_hub reads ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` at import, and the test process is offline (``conftest.py``). Reads go to olah
(``HF_ENDPOINT``), writes to the stand-in (``cfg["standin"]``). Every step's result (or its error and
traceback) is written to ``cfg["results"]`` as JSON for the tests to check; a failing step does not stop
the later ones. The token comes in the environment (``LLPF_TEST_TOKEN``), so no file holds it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def step(out: dict, name: str, fn: Callable[[], object]) -> None:
    """Run one step and record its result, or its error with the traceback."""
    try:
        out[name] = fn()
    except Exception as err:
        out[name] = {"error": type(err).__name__, "message": str(err), "trace": traceback.format_exc()}


@contextlib.contextmanager
def cli_endpoint(url: str) -> Iterator[None]:
    """Point the CLI (which has no --endpoint: ``HfApi()`` reads ``constants.ENDPOINT``) at ``url``."""
    from huggingface_hub import constants

    old, constants.ENDPOINT = constants.ENDPOINT, url
    try:
        yield
    finally:
        constants.ENDPOINT = old


def endpoints(cfg: dict) -> dict:
    from hub_fixtures import state_digest

    from hf_llpf.models.endpoints import load_endpoint

    res = {}
    for key, spec in cfg["endpoint_specs"].items():
        ep = load_endpoint(spec)
        res[key] = {"kind": ep.kind, "revision": ep.revision, "digest": state_digest(ep.model.state_dict())}
    return res


def failing_then_ok(cfg: dict) -> dict:
    from hub_fixtures import tree_digest

    import hf_llpf.hub as hub

    run, push = Path(cfg["timm_run"]), {"repo_id": "llpf/timm-path", "token": cfg["token"], "endpoint": cfg["standin"]}
    before = tree_digest(run)
    try:
        hub.push_path(run, **push)
        first = "no error"
    except Exception as err:
        first = type(err).__name__
    after = tree_digest(run)
    second = hub.push_path(run, **push)
    third = hub.push_path(run, **push)
    return {
        "first_error": first,
        "unchanged": before == after,
        "second": second,
        "third": third,
        "readme": (run / "README.md").read_text(),
    }


def loaded(cfg: dict, out: dict) -> dict:
    from hub_fixtures import state_digest

    import hf_llpf.hub as hub

    path = hub.load_path(f"llpf/bert-path@{out['bert_push']['tag']}")
    before = sorted(p.relative_to(path.root).as_posix() for p in path.root.rglob("*") if p.is_file())
    model = path.model_at(2)
    after = sorted(p.relative_to(path.root).as_posix() for p in path.root.rglob("*") if p.is_file())
    return {
        "len": len(path),
        "ticks": path.ticks,
        "metrics": path.metrics,
        "summary": path.summary,
        "config": path.config,
        "commit": path.commit,
        "files_before": before,
        "files_after": after,
        "digest": state_digest(model.state_dict()),
        "main_len": len(hub.load_path("llpf/bert-path")),
    }


def from_pretrained(out: dict) -> str:
    from hub_fixtures import state_digest
    from transformers import BertForSequenceClassification

    m = BertForSequenceClassification.from_pretrained(
        "llpf/bert-path", subfolder="points/t_000010", revision=out["bert_push"]["tag"]
    )
    return state_digest(m.state_dict())


def timm_export(cfg: dict, out: dict) -> dict:
    import timm
    from hub_fixtures import state_digest
    from huggingface_hub import ModelCard

    import hf_llpf.hub as hub

    path = hub.load_path(f"llpf/timm-path@{out['timm_push']['second']['tag']}")
    info = hub.export_point(
        path,
        point="mid",
        out_dir=cfg["export_dir"],
        push_to_hub="llpf/timm-mid",
        token=cfg["token"],
        endpoint=cfg["standin"],
    )
    model = timm.create_model("hf-hub:llpf/timm-mid", pretrained=True)
    card = ModelCard.load("llpf/timm-mid")
    return {
        "info": info,
        "digest": state_digest(model.state_dict()),
        "base_model": card.data.base_model,
        "relation": card.data.base_model_relation,
        "figures": {f"{r.metric_name} ({r.dataset_split})": r.metric_value for r in card.data.eval_results or []},
    }


def card() -> dict:
    from huggingface_hub import ModelCard

    c = ModelCard.load("llpf/timm-path", repo_type="model")
    return {
        "base_model": c.data.base_model,
        "relation": c.data.base_model_relation,
        "library": c.data.library_name,
        "tags": c.data.tags,
        "figures": {f"{r.metric_name} ({r.dataset_split})": r.metric_value for r in c.data.eval_results or []},
        "datasets": c.data.datasets,
        "dataset_ids": sorted({r.dataset_type for r in c.data.eval_results or []}),
    }


def cli_push(cfg: dict) -> int:
    from hf_llpf.cli import main

    with cli_endpoint(cfg["standin"]):
        return main(["push", cfg["bert_run"], "llpf/cli-path", "--token", cfg["token"], "--private"])


def cli_evaluate(out: dict) -> dict:
    from hf_llpf.cli import main

    buf = io.StringIO()
    spec = f"llpf/timm-path@{out['timm_push']['second']['tag']}"
    with contextlib.redirect_stdout(buf):
        rc = main(["evaluate", spec, "--train-subset", "128", "--linear-points", "3", "--continuity", "0"])
    return {"rc": rc, "stdout": buf.getvalue()}


def cli_connect_push(cfg: dict) -> int:
    from hub_fixtures import make_endpoints, save_endpoint_folder

    from hf_llpf.cli import main

    base = Path(cfg["export_dir"]).parent / "connect"
    a, b = make_endpoints("timm")
    save_endpoint_folder(a, base / "a")
    save_endpoint_folder(b, base / "b")
    argv = ["connect", str(base / "a"), str(base / "b"), "--data", "digits", "--out", str(base / "run")]
    argv += [
        "--no-progress",
        "--push-to-hub",
        "llpf/connected",
        "step_r=0.5",
        "max_iters=2",
        "min_iters=1",
        "repair_budget=4",
    ]
    os.environ["HF_TOKEN"] = cfg["token"]
    try:
        with cli_endpoint(cfg["standin"]):
            return main(argv)
    finally:
        del os.environ["HF_TOKEN"]


def hostile_export(cfg: dict) -> dict:
    """A published path whose point names climb out of the snapshot (to HF_HOME and its token)."""
    import hf_llpf.hub as hub

    out_dir = Path(cfg["export_dir"] + "-hostile")
    try:
        hub.export_point("evil/path", point="mid", out_dir=out_dir)
        return {"error": None, "exists": out_dir.exists()}
    except Exception as err:
        return {"error_type": type(err).__name__, "message": str(err), "exists": out_dir.exists()}


def plain_push(cfg: dict) -> dict:
    import hf_llpf.hub as hub

    push = {"token": cfg["token"], "endpoint": cfg["standin"], "point_revisions": True}
    timm_push = hub.push_path(cfg["plain_run"], repo_id=cfg["plain_timm_repo"], license="mit", **push)
    bert_push = hub.push_path(cfg["bert_run"], repo_id=cfg["plain_bert_rev_repo"], **push)
    again = hub.push_path(cfg["plain_run"], repo_id=cfg["plain_timm_repo"], license="mit", **push)
    return {"timm": timm_push, "bert": bert_push, "again": again}


def plain_load(cfg: dict) -> dict:
    """The card's promises, checked by a process that never imports hf_llpf (hub_plain_load.py)."""
    import subprocess

    from hub_read_proxy import ReadProxy  # olah answers a missing file 401, the Hub 404: see that module

    script = Path(cfg["tests"]) / "hub_plain_load.py"
    with ReadProxy(Path(cfg["mirrors"]), os.environ["HF_ENDPOINT"]) as proxy:
        env = {**os.environ, "HF_ENDPOINT": proxy.url}
        run = [sys.executable, str(script), cfg["cfg_file"]]
        proc = subprocess.run(run, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        return {"error": "plain_load failed", "message": proc.stderr[-3000:], "trace": proc.stdout[-3000:]}
    return json.loads(Path(cfg["plain_results"]).read_text())


def resumed_push(cfg: dict) -> dict:
    """A push in batches of 4 files whose 3rd commit fails (the stand-in's hook), then the same push again."""
    import hf_llpf.hub as hub
    from hf_llpf.hub.push import published_files

    run = cfg["resume_run"]
    push = {"repo_id": "llpf/resume-path", "token": cfg["token"], "endpoint": cfg["standin"], "files_per_commit": 4}
    try:
        hub.push_path(run, **push)
        first = "no error"
    except Exception as err:
        first = type(err).__name__
    second = hub.push_path(run, **push)
    third = hub.push_path(run, **push)
    files, _ = published_files(run, repo_id="llpf/resume-path")
    return {
        "first_error": first,
        "second": second,
        "third": third,
        "expected_tag": hub.TAG_PREFIX + hub.content_hash(files)[:12],
        "expected_files": sorted(files),
    }


def options_push(cfg: dict) -> dict:
    """--every, --exclude, --commit-message, --private, and then --create-pr with another root point."""
    import hf_llpf.hub as hub

    push = {"repo_id": "llpf/options-path", "token": cfg["token"], "endpoint": cfg["standin"]}
    first = hub.push_path(
        cfg["resume_run"], every=3, exclude=["plots/*"], commit_message="a path, every 3rd point", private=True, **push
    )
    pr = hub.push_path(cfg["resume_run"], every=3, exclude=["plots/*"], root_point="best", create_pr=True, **push)
    return {"first": first, "pr": pr}


def main(cfg_file: str) -> None:
    torch.set_num_threads(1)
    cfg = json.loads(Path(cfg_file).read_text())
    cfg["cfg_file"] = cfg_file
    cfg["token"] = os.environ.pop("LLPF_TEST_TOKEN")  # given in the environment, so no test file holds it
    sys.path.insert(0, cfg["tests"])
    import hf_llpf.hub as hub

    out: dict = {}
    w, token = cfg["standin"], cfg["token"]
    step(out, "endpoints", lambda: endpoints(cfg))
    step(out, "timm_push", lambda: failing_then_ok(cfg))
    step(out, "bert_push", lambda: hub.push_path(cfg["bert_run"], repo_id="llpf/bert-path", token=token, endpoint=w))
    step(
        out,
        "bert_branch",
        lambda: hub.push_path(cfg["bert_run"], repo_id="llpf/bert-path", token=token, endpoint=w, revision="exp"),
    )
    step(
        out, "wrong_token", lambda: hub.push_path(cfg["bert_run"], repo_id="llpf/other", token="hf_wrong", endpoint=w)
    )
    step(out, "load_path", lambda: loaded(cfg, out))
    step(out, "from_pretrained", lambda: from_pretrained(out))
    step(out, "timm_export", lambda: timm_export(cfg, out))
    step(out, "card", card)
    step(out, "cli_push", lambda: cli_push(cfg))
    step(out, "cli_evaluate", lambda: cli_evaluate(out))
    step(out, "cli_connect_push", lambda: cli_connect_push(cfg))
    step(out, "hostile_export", lambda: hostile_export(cfg))
    step(out, "plain_push", lambda: plain_push(cfg))
    step(out, "plain_load", lambda: plain_load(cfg))
    step(out, "resumed_push", lambda: resumed_push(cfg))
    step(out, "options_push", lambda: options_push(cfg))
    Path(cfg["results"]).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
