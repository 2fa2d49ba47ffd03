"""Publishing, loading and exporting paths (hf_llpf.hub).

Fast tests (default suite, offline): the model card, point selection and export from a local run
directory, and every input error. Hub tests (``-m hub``): a real ``olah`` server serves git repos for
reads and the stand-in in ``hub_standin.py`` takes writes into those same repos, so a push made with the
real ``HfApi`` is read back by real ``snapshot_download`` / ``from_pretrained`` / ``timm``. The Hub
round trip (``hub_round_trip.py``) runs in one subprocess with its own environment: huggingface_hub
reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` at import, and this test process is offline (``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from hub_fixtures import make_run_dir, tree_digest

from hf_llpf import __version__
from hf_llpf.errors import ConfigError, OfflineError, RunDirectoryError, UnknownNameError
from hf_llpf.hub import (
    CARD_TAGS,
    HubAuthError,
    build_model_card,
    export_point,
    load_path,
    push_path,
    select_point,
)
from hf_llpf.hub.card import Publication
from hf_llpf.run import RunPath as LLPFPath

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]
OLAH_CLI = REPO_ROOT / ".olah" / "bin" / "olah-cli"
TOKEN = "hf_standinSECRETtoken0123456789abcdef"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One timm run with Hub endpoints and one transformers run with local endpoints (read-only in tests)."""
    base = tmp_path_factory.mktemp("runs")
    timm_run = make_run_dir(base / "timm", kind="timm", hub_ids=("org/a", "org/b"), evaluated=True)
    bert_run = make_run_dir(base / "bert", kind="transformers", command=None, report=False)
    return {"timm": timm_run, "bert": bert_run}


# ----------------------------------------------------------------------------------------------------------------
# Fast tests: card, export, errors
# ----------------------------------------------------------------------------------------------------------------


def test_card_metadata_round_trips_through_modelcard_load(runs, tmp_path):
    from huggingface_hub import ModelCard

    card = build_model_card(runs["timm"], repo_id="me/path", publication=Publication(root=(2, "mid")))
    (tmp_path / "README.md").write_text(str(card))
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.base_model == ["org/a", "org/b"]
    assert data.base_model_relation == "merge"
    assert data.library_name == "timm"
    assert data.tags == CARD_TAGS
    assert data.model_name == "path"
    row = json.loads((runs["timm"] / "path_metrics.json").read_text())["points"][2]
    figures = {r.metric_name: (r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results}
    assert figures == {  # the root model's own figures only (test_hub_card.py checks the rest of the conventions)
        "train loss": ("loss", row["eval_train_loss"], "train"),
        "train accuracy": ("accuracy", row["eval_train_acc"], "train"),
        "test loss": ("loss", row["test_loss"], "test"),
        "test accuracy": ("accuracy", row["test_acc"], "test"),
    }
    assert {r.task_type for r in data.eval_results} == {"image-classification"}
    text = loaded.text
    assert "![loss](plots/loss.png)" in text
    assert "hf-llpf connect org/a org/b --data digits --seed 0" in text  # the recorded command
    assert "method: m2m" in text and "step_r: 0.02" in text  # llpf_config.yaml
    assert f"hf_llpf {__version__}" in text
    assert 'load_path("me/path")' in text and 'timm.create_model("hf-hub:me/path", pretrained=True)' in text
    # The evaluation report section is kept once; the old card text around it is not.
    assert text.count("<!-- hf_llpf:report:start -->") == 1 and "Barrier 0.05 vs 1.8." in text
    assert "# old card" not in text
    assert "| barrier | 0.05 | 1.8 |" in text


def test_card_with_local_endpoints_and_no_recorded_command(runs):
    card = build_model_card(runs["bert"], repo_id="me/bert-path", publication=Publication(root=(2, "mid")))
    assert card.data.base_model is None and card.data.get("base_model_relation") is None
    assert card.data.library_name == "transformers" and card.data.datasets is None  # "digits" is not a Hub id
    # Not evaluated: the root has its test figures only.
    assert {(r.task_type, r.metric_name) for r in card.data.eval_results} == {
        ("text-classification", "test loss"),
        ("text-classification", "test accuracy"),
    }
    assert (
        'AutoModelForSequenceClassification.from_pretrained("me/bert-path", subfolder="points/t_000010")' in card.text
    )
    assert "No command was recorded" in card.text
    assert "hf_llpf:report" not in card.text


def test_select_point_forms(runs):
    path = LLPFPath(runs["timm"])
    assert select_point(path, "mid") == 2  # position 0.5 by arc length (test_hub_points.py has the criteria)
    assert select_point(path, "tick:15") == 3 and select_point(path, "t5") == 1
    assert select_point(path, -1) == 4 and select_point(path, "0") == 0
    with pytest.raises(UnknownNameError, match=r"tick:N"):
        select_point(path, "middle")
    with pytest.raises(UnknownNameError, match=r"point tick 7.*0, 5, 10, 15, 20"):
        select_point(path, "tick:7")
    with pytest.raises(UnknownNameError, match=r"-5\.\.4"):
        select_point(path, 5)


def test_export_point_writes_a_standalone_timm_model_with_its_card(runs, tmp_path):
    import timm
    from huggingface_hub import ModelCard

    before = tree_digest(runs["timm"])
    info = export_point(runs["timm"], point="mid", out_dir=tmp_path / "mid")
    assert (info["index"], info["tick"], info["point"]) == (2, 10, "points/t_000010")
    assert info["files"] == ["README.md", "config.json", "model.safetensors"]
    plain = timm.create_model(f"local-dir:{tmp_path / 'mid'}", pretrained=True)
    expected = LLPFPath(runs["timm"]).state_dict_at(2)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in expected.items())
    card = ModelCard.load(tmp_path / "mid" / "README.md")
    assert card.data.base_model == ["org/a", "org/b"] and card.data.base_model_relation == "merge"
    assert "llpf-point" in card.data.tags and card.data.library_name == "timm"
    assert "`org/a`" in card.text and "`org/b`" in card.text and "index 2, tick 10" in card.text
    # Its model-index is the exported point's own figures; the path's verdict, intended use and limits in the text.
    row = json.loads((runs["timm"] / "path_metrics.json").read_text())["points"][2]
    assert {(r.metric_name, r.dataset_split, r.dataset_name): r.metric_value for r in card.data.eval_results} == {
        ("train loss", "train", "digits"): row["eval_train_loss"],
        ("train accuracy", "train", "digits"): row["eval_train_acc"],
        ("test loss", "test", "digits"): row["test_loss"],
        ("test accuracy", "test", "digits"): row["test_acc"],
    }
    assert card.data.model_name == "point-2" and card.text.count("The path it lies on: **verdict: ") == 1
    headings = [x for x in card.text.splitlines() if x.startswith("## ")]
    assert headings == ["## Intended use", "## Limitations", "## Load"]
    assert tree_digest(runs["timm"]) == before  # the source run directory is only read
    with pytest.raises(RunDirectoryError, match="not empty"):
        export_point(runs["timm"], point="mid", out_dir=tmp_path / "mid")


def test_push_rejects_bad_input_before_any_work(runs, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    for name in ("create_repo", "list_repo_refs", "create_commit", "create_tag"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)
    before = tree_digest(runs["timm"])
    for bad in ("noslash", "a/b/c", "org/na me", "org/-x", "org/a--b", "org/x@main", ""):
        with pytest.raises(ConfigError, match=r"namespace/name") as err:
            push_path(runs["timm"], repo_id=bad, token=TOKEN)
        assert repr(bad) in str(err.value)
    with pytest.raises(RunDirectoryError, match="not a directory"):
        push_path(runs["timm"] / "nope", repo_id="me/path", token=TOKEN)
    # conftest.py sets HF_HUB_OFFLINE=1: a clear error before anything is built, sent or written.
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE") as err:
        push_path(runs["timm"], repo_id="me/path", token=TOKEN)
    assert TOKEN not in str(err.value)
    assert tree_digest(runs["timm"]) == before


def test_push_without_token_says_how_to_give_one(runs, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", os.devnull)
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", os.devnull)
    with pytest.raises(HubAuthError, match=r"no Hugging Face token.*--token.*HF_TOKEN"):
        push_path(runs["timm"], repo_id="me/path")


def test_load_path_errors():
    with pytest.raises(ConfigError, match=r"path='not a repo'.*namespace/name"):
        load_path("not a repo")
    with pytest.raises(OfflineError, match="not in the local cache"):
        load_path("org/never-downloaded@main")


def test_cli_export_and_push_errors(runs, tmp_path, capsys):
    from hf_llpf.cli import main

    assert main(["export", str(runs["bert"]), "--point", "tick:15", "--out", str(tmp_path / "p")]) == 0
    assert "point 3 (tick 15" in capsys.readouterr().out
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tmp_path / "p")
    expected = LLPFPath(runs["bert"]).state_dict_at(3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert main(["push", str(runs["bert"]), "bad id"]) == 2
    assert "repo_id='bad id'" in capsys.readouterr().err
    assert main(["push", str(runs["bert"]), "me/path", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "offline mode is on" in err and TOKEN not in err


# ----------------------------------------------------------------------------------------------------------------
# Hub tests: olah (reads) + the stand-in (writes), one subprocess (hub_round_trip.py) with its own Hub environment
# ----------------------------------------------------------------------------------------------------------------

ROUND_TRIP = Path(__file__).parents[1] / "hub_round_trip.py"  # every Hub step, run as its own program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    """A real olah server in offline mode serving the git repos under ``mirrors/``; yields (url, mirrors, log)."""
    if not OLAH_CLI.is_file():
        pytest.skip(f"olah is not installed ({OLAH_CLI} is missing): run `make olah`")
    base = tmp_path_factory.mktemp("olah")
    mirrors, port = base / "mirrors", _free_port()
    (mirrors / "models").mkdir(parents=True)
    toml = base / "olah.toml"
    toml.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{base / "cache"}"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n'
    )
    log = base / "olah.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(OLAH_CLI), "-c", str(toml)], stdout=f, stderr=subprocess.STDOUT, cwd=base)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"olah did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", mirrors, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def hub_round_trip(olah, tmp_path_factory):
    """Seed endpoint repos, run every Hub step in one subprocess, and return what it measured."""
    from hub_fixtures import make_endpoints, save_endpoint_folder, state_digest
    from hub_standin import HubStandin, seed_repo

    url, mirrors, olah_log = olah
    base = tmp_path_factory.mktemp("hub")
    seeded, local_digests, specs = {}, {}, {}
    for kind in ("timm", "transformers"):
        a, _ = make_endpoints(kind)
        repo = f"endpoints/{kind}-a"
        seeded[kind] = seed_repo(mirrors, repo, save_endpoint_folder(a, base / f"ep-{kind}"))
        local_digests[kind] = state_digest(a.state_dict())
        specs[kind] = f"{repo}@main"
    timm_run = make_run_dir(
        base / "timm-run", kind="timm", hub_ids=("endpoints/timm-a", "endpoints/timm-b"), evaluated=True
    )
    bert_run = make_run_dir(base / "bert-run", kind="transformers", hub_ids=("endpoints/transformers-a", "x/y"))
    # A pickle weights file in a point is published as is but must never be downloaded by load_path.
    (bert_run / "points" / "t_000010" / "pytorch_model.bin").write_bytes(b"not a real pickle" * 64)
    plain_run = make_run_dir(
        base / "plain-run", kind="timm-plain", hub_ids=("org/plain-a", "org/plain-b"), evaluated=True
    )
    resume_run = make_run_dir(base / "resume-run", kind="timm")
    hostile = make_run_dir(base / "hostile-run", kind="timm")
    metrics = json.loads((hostile / "path_metrics.json").read_text())
    metrics["points"][2]["point"] = "../../../../.."
    (hostile / "path_metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(hostile / "checkpoint")
    seed_repo(mirrors, "evil/path", hostile)
    home = base / "hf_home"
    with HubStandin(mirrors, token=TOKEN) as standin:
        standin.fail_commits.add("llpf/timm-path")  # the first push of the timm path fails midway
        standin.fail_commit_at["llpf/resume-path"] = 3  # a push in batches, killed at its third commit
        cfg = {
            "tests": str(Path(__file__).parents[1]),
            "standin": standin.url,
            "endpoint_specs": specs,
            "timm_run": str(timm_run),
            "bert_run": str(bert_run),
            "export_dir": str(base / "export"),
            "results": str(base / "results.json"),
            "plain_run": str(plain_run),
            "resume_run": str(resume_run),
            "plain_timm_repo": "llpf/plain-path",
            "plain_bert_repo": "llpf/bert-path",
            "plain_point": "points/t_000010",
            "plain_bert_rev_repo": "llpf/bert-revisions",
            "plain_revision": "t_000005",
            "plain_results": str(base / "plain_results.json"),
            "mirrors": str(mirrors),
        }
        (base / "cfg.json").write_text(json.dumps(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_"))}
        env.update(
            LLPF_TEST_TOKEN=TOKEN,
            HF_ENDPOINT=url,
            HF_HOME=str(home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
        )
        proc = subprocess.run(
            [sys.executable, str(ROUND_TRIP), str(base / "cfg.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        requests = list(standin.requests)
        committed, created = dict(standin.committed), dict(standin.created)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((base / "results.json").read_text())
    return {
        "results": results,
        "seeded": seeded,
        "local_digests": local_digests,
        "mirrors": mirrors,
        "runs": {"timm": timm_run, "bert": bert_run, "plain": plain_run, "resume": resume_run},
        "committed": committed,
        "created": created,
        "base": base,
        "logs": proc.stdout + proc.stderr + olah_log.read_text(errors="replace") + repr(requests),
        "scan": [base, mirrors],
        "requests": requests,
    }


def _ok(results: dict, name: str):
    value = results[name]
    assert not (isinstance(value, dict) and "error" in value and "trace" in value), value.get("trace")
    return value


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.hub
def test_endpoints_given_as_hub_ids_load_with_their_commit(hub_round_trip):
    res = _ok(hub_round_trip["results"], "endpoints")
    for kind in ("timm", "transformers"):
        assert res[kind]["kind"] == kind
        assert res[kind]["revision"] == hub_round_trip["seeded"][kind]  # "@main" resolved to the commit sha
        assert res[kind]["digest"] == hub_round_trip["local_digests"][kind]


@pytest.mark.hub
def test_failed_push_changes_nothing_and_rerun_publishes_one_tagged_commit(hub_round_trip):
    res = _ok(hub_round_trip["results"], "timm_push")
    assert res["first_error"] == "HfHubHTTPError" and res["unchanged"]
    second = res["second"]
    assert second["created_commit"] and second["created_tag"] and second["tag"].startswith("llpf-")
    repo = hub_round_trip["mirrors"] / "models" / "llpf/timm-path"
    assert _git(repo, "rev-list", "--count", "main") == "2"  # the Hub's initial commit + the one push
    assert (
        _git(repo, "rev-parse", f"{second['tag']}^{{commit}}") == second["commit"] == _git(repo, "rev-parse", "main")
    )
    run = hub_round_trip["runs"]["timm"]
    published = set(_git(repo, "ls-tree", "-r", "--name-only", second["tag"]).splitlines())
    from hf_llpf.hub.push import published_files

    files, _ = published_files(run, repo_id="llpf/timm-path")
    assert published == {".gitattributes", *files}
    assert {"config.json", "model.safetensors"} <= published  # the model at the root
    assert not any(p.startswith("checkpoint") or ".tmp" in p for p in published)
    assert _git(repo, "show", f"{second['tag']}:README.md") == (run / "README.md").read_text().strip()
    assert 'load_path("llpf/timm-path")' in res["readme"]


@pytest.mark.hub
def test_repush_of_unchanged_path_makes_no_commit_and_no_tag(hub_round_trip):
    res = _ok(hub_round_trip["results"], "timm_push")
    third = res["third"]
    assert (third["created_commit"], third["created_tag"]) == (False, False)
    assert third["commit"] == res["second"]["commit"] and third["tag"] == res["second"]["tag"]
    repo = hub_round_trip["mirrors"] / "models" / "llpf/timm-path"
    assert _git(repo, "tag", "--list").splitlines() == [res["second"]["tag"]]
    commits = [r for r in hub_round_trip["requests"] if r == ("POST", "/api/models/llpf/timm-path/commit/main")]
    assert len(commits) == 2  # the injected failure + the successful push; the re-push sent none


@pytest.mark.hub
def test_push_to_a_branch_and_a_refused_token(hub_round_trip):
    res = hub_round_trip["results"]
    first, branch = _ok(res, "bert_push"), _ok(res, "bert_branch")
    repo = hub_round_trip["mirrors"] / "models" / "llpf/bert-path"
    assert _git(repo, "rev-parse", "exp") == _git(repo, "rev-parse", "main") == first["commit"]
    assert branch["tag"] == first["tag"] and not branch["created_tag"] and not branch["created_commit"]
    assert res["wrong_token"]["error"] == "HubAuthError" and "HTTP 401" in res["wrong_token"]["message"]
    assert "hf_wrong" not in res["wrong_token"]["message"]


@pytest.mark.hub
def test_load_path_reads_metrics_eagerly_and_points_lazily(hub_round_trip):
    res = _ok(hub_round_trip["results"], "load_path")
    local = LLPFPath(hub_round_trip["runs"]["bert"])
    assert res["len"] == len(local) == 5 and res["ticks"] == local.ticks
    assert res["metrics"] == local.metrics and res["summary"] == local.summary and res["config"] == local.config
    assert res["commit"] == hub_round_trip["results"]["bert_push"]["commit"]
    assert not any(f.startswith("points/") for f in res["files_before"])
    assert "plots/loss.png" in res["files_before"] and "path_metrics.csv" in res["files_before"]
    new = set(res["files_after"]) - set(res["files_before"])
    point_files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    assert new == {f"points/t_000010/{name}" for name in point_files}  # the point's weights, config and tokenizer
    from hub_fixtures import state_digest

    assert res["digest"] == state_digest(local.state_dict_at(2))
    assert res["main_len"] == 5


@pytest.mark.hub
def test_published_point_loads_with_transformers_subfolder(hub_round_trip):
    from hub_fixtures import state_digest

    digest = _ok(hub_round_trip["results"], "from_pretrained")
    assert digest == state_digest(LLPFPath(hub_round_trip["runs"]["bert"]).state_dict_at(2))


@pytest.mark.hub
def test_exported_point_loads_with_timm_from_its_own_repo(hub_round_trip):
    from hub_fixtures import state_digest

    res = _ok(hub_round_trip["results"], "timm_export")
    assert res["info"]["index"] == 2 and res["info"]["repo_id"] == "llpf/timm-mid"
    assert res["digest"] == state_digest(LLPFPath(hub_round_trip["runs"]["timm"]).state_dict_at(2))
    assert res["base_model"] == ["endpoints/timm-a", "endpoints/timm-b"] and res["relation"] == "merge"
    row = _rows(hub_round_trip["runs"]["timm"])[2]
    assert res["figures"] == _own_figures(row)  # the exported point's own figures


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "path_metrics.json").read_text())["points"]


def _own_figures(row: dict) -> dict:
    """A card's model-index as "metric name (split)" -> value: a model's own train and test figures."""
    return {
        "train loss (train)": row["eval_train_loss"],
        "train accuracy (train)": row["eval_train_acc"],
        "test loss (test)": row["test_loss"],
        "test accuracy (test)": row["test_acc"],
    }


@pytest.mark.hub
def test_published_card_metadata_round_trips(hub_round_trip):
    res = _ok(hub_round_trip["results"], "card")
    assert res["base_model"] == ["endpoints/timm-a", "endpoints/timm-b"] and res["relation"] == "merge"
    assert res["library"] == "timm" and res["tags"] == CARD_TAGS
    # The model-index is the root model's (the middle point, index 2); the path's figures are in the text only.
    assert res["figures"] == _own_figures(_rows(hub_round_trip["runs"]["timm"])[2])
    assert res["datasets"] is None and res["dataset_ids"] == ["digits"]  # a built-in data name, not a Hub id


@pytest.mark.hub
def test_cli_push(hub_round_trip):
    assert _ok(hub_round_trip["results"], "cli_push") == 0
    repo = hub_round_trip["mirrors"] / "models" / "llpf/cli-path"
    assert _git(repo, "tag", "--list").startswith("llpf-")


@pytest.mark.hub
def test_cli_evaluates_a_published_path(hub_round_trip):
    res = _ok(hub_round_trip["results"], "cli_evaluate")
    assert res["rc"] == 0 and "5 points evaluated on 128 train" in res["stdout"]


@pytest.mark.hub
def test_connect_push_to_hub_publishes_the_evaluated_path(hub_round_trip):
    assert _ok(hub_round_trip["results"], "cli_connect_push") == 0
    repo = hub_round_trip["mirrors"] / "models" / "llpf/connected"
    assert _git(repo, "tag", "--list").startswith("llpf-")
    assert "max_train_loss" in (repo / "path_metrics.json").read_text()  # evaluated before it was pushed
    assert not (repo / "checkpoint").exists()


@pytest.mark.hub
def test_a_hostile_published_path_is_refused_before_anything_is_copied(hub_round_trip):
    value = hub_round_trip["results"]["hostile_export"]
    assert value.get("error_type") == "RunDirectoryError", value
    assert "points[2].point='../../../../..'" in value["message"] and not value["exists"]


@pytest.mark.hub
def test_token_is_never_written(hub_round_trip):
    hits = []
    for root in hub_round_trip["scan"]:
        for f in Path(root).rglob("*"):
            if not f.is_file():
                continue
            data = f.read_bytes()
            if "/objects/" in f.as_posix() and "/.git/" in f.as_posix():
                try:  # loose git objects are zlib-compressed
                    data = zlib.decompress(data)
                except zlib.error:
                    pass
            if TOKEN.encode() in data:
                hits.append(str(f))
    assert hits == [], hits
    assert TOKEN not in hub_round_trip["logs"]
    for repo in (hub_round_trip["mirrors"] / "models").glob("*/*"):
        assert TOKEN not in _git(repo, "log", "-p", "--all")
    assert shutil.which("git")


def _blob(repo: Path, rev: str, rel: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{rel}"], capture_output=True, check=True).stdout


@pytest.mark.hub
def test_plain_libraries_load_the_root_and_a_middle_point(hub_round_trip):
    """transformers and timm alone (no hf_llpf in the process) load what the card promises."""
    from hub_fixtures import state_digest

    res, runs = _ok(hub_round_trip["results"], "plain_load"), hub_round_trip["runs"]
    assert res["hf_llpf_imported"] is False
    bert, plain = LLPFPath(runs["bert"]), LLPFPath(runs["plain"])
    # The root is the middle of the path by arc length: index 2 of 5 evenly spaced points (points/t_000010).
    assert _ok(res, "transformers_root") == state_digest(bert.state_dict_at(2))
    assert _ok(res, "transformers_point") == state_digest(bert.state_dict_at(2))
    assert _ok(res, "timm_root") == state_digest(plain.state_dict_at(2))
    point = _ok(res, "timm_point")
    assert point["digest"] == state_digest(plain.state_dict_at(2))
    assert point["files"] == ["points/t_000010/config.json", "points/t_000010/model.safetensors"]  # that folder only
    assert state_digest(plain.state_dict_at(2)) != state_digest(
        plain.state_dict_at(1)
    )  # the digests tell points apart


@pytest.mark.hub
def test_published_points_are_complete_models_for_plain_libraries(hub_round_trip):
    """Tokenizer and pipeline by root, subfolder and revision; timm's data config is the run's data (digits)."""
    from generated_text import word_tokenizer
    from hub_fixtures import DIGITS_DATA_CONFIG, state_digest

    res, runs = _ok(hub_round_trip["results"], "plain_load"), hub_round_trip["runs"]
    ids = word_tokenizer()("good great film")["input_ids"]
    for where in ("root", "point", "revision"):
        assert _ok(res, f"tokenizer_{where}") == ids, where
    bert = LLPFPath(runs["bert"])
    for where, index in (("root", 2), ("point", 2), ("revision", 1)):
        got = _ok(res, f"pipeline_{where}")
        assert got["digest"] == state_digest(bert.state_dict_at(index)), where
        model, batch = bert.model_at(index), word_tokenizer()("good great film", return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**batch).logits[0], -1)
        assert got["label"] == f"LABEL_{int(probs.argmax())}" and got["score"] == pytest.approx(float(probs.max()))
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in DIGITS_DATA_CONFIG.items()}
    for where in ("root", "point", "revision"):
        got = _ok(res, f"timm_data_{where}")
        assert got["data"] == expected and got["num_classes"] == 10, where
        assert not {"hf_hub_id", "url", "tag", "license", "origin_url", "paper_ids"} & set(got["keys"]), where
    repo = hub_round_trip["mirrors"] / "models" / "llpf/bert-path"
    listed = _git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    for where in ("", "points/t_000000/", "points/t_000010/", "points/t_000020/"):
        assert {f"{where}tokenizer.json", f"{where}tokenizer_config.json"} <= set(listed), where
    assert not [f for f in listed if f.startswith("assets/")]  # stored once in the run dir, published per point


@pytest.mark.hub
def test_the_card_follows_hub_conventions(hub_round_trip):
    res = _ok(hub_round_trip["results"], "plain_load")
    timm_card, bert_card = _ok(res, "timm_card"), _ok(res, "bert_card")
    assert (timm_card["license"], timm_card["pipeline_tag"], timm_card["library_name"]) == (
        "mit",
        "image-classification",
        "timm",
    )
    assert timm_card["base_model"] == ["org/plain-a", "org/plain-b"] and timm_card["relation"] == "merge"
    results = {f"{r['name']} ({r['split']})": r["value"] for r in timm_card["results"]}
    assert results == _own_figures(_rows(hub_round_trip["runs"]["plain"])[2])  # the root model's own figures
    assert {r["dataset"] for r in timm_card["results"]} == {"digits"}
    text = timm_card["text"]
    assert "**point 2 of 5**" in text and "chosen as mid: the point nearest the middle" in text
    assert text.count("![") == 1 and "| barrier | 0.05 | 1.8 |" in text  # plots and summary once (the card's)
    assert text.count("**verdict: not certified: the run records no loss ceiling; the path's maximum train") == 1
    assert "\n## Intended use\n" in text and "\n## Limitations\n" in text
    assert 'timm.create_model("hf-hub:llpf/plain-path", pretrained=True)' in text and "import hf_llpf" not in text
    assert 'allow_patterns=["points/t_000010/*"]' in text and "{'" not in text  # no raw Python dict
    assert (bert_card["license"], bert_card["pipeline_tag"], bert_card["library_name"]) == (
        "unknown",
        "text-classification",
        "transformers",
    )
    assert bert_card["base_model"] == ["endpoints/transformers-a", "x/y"]
    assert 'AutoModelForSequenceClassification.from_pretrained("llpf/bert-path", subfolder=' in bert_card["text"]
    assert 'AutoTokenizer.from_pretrained("llpf/bert-path", subfolder="points/t_000010")' in bert_card["text"]


@pytest.mark.hub
def test_no_published_file_holds_a_path_of_the_machine(hub_round_trip):
    forbidden = {str(hub_round_trip["base"]), os.getcwd(), str(Path.home()), str(REPO_ROOT), "/tmp/"}
    forbidden = {f.encode() for f in forbidden if len(Path(f).parts) > 1}
    hits, checked = [], 0
    for repo in sorted((hub_round_trip["mirrors"] / "models" / "llpf").glob("*")):
        for ref in _git(repo, "for-each-ref", "--format=%(refname)").split():
            for rel in _git(repo, "ls-tree", "-r", "--name-only", ref).splitlines():
                data = _blob(repo, ref, rel)
                checked += 1
                hits += [f"{repo.name}@{ref}:{rel}: {f.decode()}" for f in forbidden if f in data]
    assert checked > 100 and hits == [], hits
    # The connect run had local endpoints given by absolute paths: published by folder name and hashes.
    connected = hub_round_trip["mirrors"] / "models" / "llpf/connected"
    endpoints = json.loads(_blob(connected, "main", "endpoints.json"))
    assert (endpoints["A"]["id"], endpoints["B"]["id"]) == ("a", "b")
    assert endpoints["A"]["source"] == "local" and endpoints["A"]["revision"].startswith("local:")


@pytest.mark.hub
def test_a_push_killed_mid_way_resumes_with_only_what_is_missing(hub_round_trip):
    res = _ok(hub_round_trip["results"], "resumed_push")
    commits = hub_round_trip["committed"]["llpf/resume-path"]
    expected = res["expected_files"]
    batches = -(-len(expected) // 4)  # 4 files a commit
    assert res["first_error"] == "HfHubHTTPError" and batches >= 4
    first_run, rerun = commits[:2], commits[2:]  # the 3rd commit of the first run failed
    assert [len(c) for c in first_run] == [4, 4] and len(rerun) == batches - 2
    sent_first = {f for c in first_run for f in c}
    sent_again = {f for c in rerun for f in c}
    assert not sent_first & sent_again and sent_first | sent_again == set(expected)  # nothing sent twice
    second, third = res["second"], res["third"]
    assert second["tag"] == res["expected_tag"] and second["commits"] == batches - 2 and second["created_tag"]
    assert (third["created_commit"], third["created_tag"], third["tag"]) == (False, False, second["tag"])
    repo = hub_round_trip["mirrors"] / "models" / "llpf/resume-path"
    assert set(_git(repo, "ls-tree", "-r", "--name-only", second["tag"]).splitlines()) == {".gitattributes", *expected}
    assert _git(repo, "rev-parse", f"{second['tag']}^{{commit}}") == _git(repo, "rev-parse", "main")
    assert _git(repo, "rev-list", "--count", "main") == str(1 + 2 + batches - 2)


@pytest.mark.hub
def test_push_options_every_exclude_message_private_and_a_pull_request(hub_round_trip):
    res = _ok(hub_round_trip["results"], "options_push")
    first, pr = res["first"], res["pr"]
    # every 3rd point (0, 3) + both ends and the stage boundaries (0, 4) + the root's point (mid: 2).
    assert first["points"] == [0, 2, 3, 4] and first["root"][0] == 2
    repo = hub_round_trip["mirrors"] / "models" / "llpf/options-path"
    files = set(_git(repo, "ls-tree", "-r", "--name-only", "main").splitlines())
    assert {f.split("/")[1] for f in files if f.startswith("points/")} == {
        "t_000000",
        "t_000010",
        "t_000015",
        "t_000020",
    }
    assert not any(f.startswith("plots/") for f in files)
    metrics = json.loads(_blob(repo, "main", "path_metrics.json"))
    assert [p["point"] for p in metrics["points"]] == [f"points/t_0000{t:02d}" for t in (0, 10, 15, 20)]
    assert _git(repo, "log", "-1", "--format=%s", "main") == "a path, every 3rd point"
    assert hub_round_trip["created"]["llpf/options-path"] == {"private": True}
    # The pull request: root moved to "best" (index 1, lowest train loss in the middle half), main untouched.
    assert pr["pr_url"].endswith("/llpf/options-path/discussions/1") and pr["tag"] is None and pr["root"][0] == 1
    assert _git(repo, "rev-parse", "main") == first["commit"] and _git(repo, "rev-parse", "refs/pr/1") == pr["commit"]
    pr_files = set(_git(repo, "ls-tree", "-r", "--name-only", "refs/pr/1").splitlines())
    assert "points/t_000005/model.safetensors" in pr_files and "points/t_000010/model.safetensors" not in pr_files
    assert _blob(repo, "refs/pr/1", "model.safetensors") == _blob(
        repo, "refs/pr/1", "points/t_000005/model.safetensors"
    )


@pytest.mark.hub
def test_point_revisions_load_by_revision_with_plain_libraries(hub_round_trip):
    from hub_fixtures import state_digest

    res, runs = _ok(hub_round_trip["results"], "plain_load"), hub_round_trip["runs"]
    pushed = _ok(hub_round_trip["results"], "plain_push")
    branches = [f"t_0000{t:02d}" for t in (0, 5, 10, 15, 20)]
    assert sorted(pushed["timm"]["point_revisions"]) == branches == sorted(pushed["bert"]["point_revisions"])
    assert _ok(res, "transformers_revision") == state_digest(LLPFPath(runs["bert"]).state_dict_at(1))
    assert _ok(res, "timm_revision") == state_digest(LLPFPath(runs["plain"]).state_dict_at(1))
    repo = hub_round_trip["mirrors"] / "models" / "llpf/plain-path"
    card = _blob(repo, "t_000005", "README.md").decode()
    assert "**point 1 of 5**" in card and "chosen as the point of this branch, `t_000005`" in card
    # The branch's card loads the branch (what plain_load's timm_revision ran), and indexes its own root's figures.
    assert '`timm.create_model("hf-hub:llpf/plain-path@t_000005", pretrained=True)` loads it' in card
    assert 'timm.create_model("hf-hub:llpf/plain-path", pretrained=True)' not in card
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    found = {
        f"{m['name']} ({r['dataset']['split']})": m["value"]
        for r in meta["model-index"][0]["results"]
        for m in r["metrics"]
    }
    assert found == _own_figures(_rows(runs["plain"])[1])
    bert_card = _blob(hub_round_trip["mirrors"] / "models" / "llpf/bert-revisions", "t_000005", "README.md").decode()
    assert (
        'AutoModelForSequenceClassification.from_pretrained("llpf/bert-revisions", revision="t_000005")` loads it'
        in bert_card
    )
    assert _blob(repo, "t_000005", "model.safetensors") == _blob(repo, "main", "points/t_000005/model.safetensors")
    assert "**point 2 of 5**" in _blob(repo, "main", "README.md").decode()  # main's root is still the middle
    # A point branch holds main's files with another root: its commit changed only the root model and the card.
    changed = _git(repo, "diff", "--name-only", pushed["timm"]["commit"], "t_000005").splitlines()
    assert sorted(changed) == ["README.md", "model.safetensors"]  # config.json is the same for every point
    again = pushed["again"]  # a re-run changes nothing, on main or on a branch
    assert not again["created_commit"] and again["point_revisions"] == pushed["timm"]["point_revisions"]
