"""What a push publishes, offline: the card by Hub conventions, the model at the root, no path of the machine,
the license, the file selection, and the batches of the upload."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hub_fixtures import SUMMARY, make_run_dir

from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.hub import build_model_card
from hf_llpf.hub.card import Publication
from hf_llpf.hub.public import check_no_machine_paths, machine_paths, resolve_license, scrub_text
from hf_llpf.hub.push import published_files
from hf_llpf.hub.upload import batches, stale_files

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("card")
    return {
        "timm": make_run_dir(base / "timm", kind="timm", hub_ids=("org/a", "org/b")),
        "bert": make_run_dir(base / "bert", kind="transformers", command=None, report=False),
    }


@pytest.fixture
def local_run(runs, tmp_path):
    """The BERT run with its endpoints and data recorded as absolute paths of this machine."""
    run = shutil.copytree(runs["bert"], tmp_path / "run")
    eps = {k: str(tmp_path / "endpoints" / f"seed{i}") for i, k in enumerate("AB")}
    data = json.loads((run / "endpoints.json").read_text())
    for key, path in eps.items():
        data[key]["id"] = path
    data["command"] = f"hf-llpf connect {eps['A']} {eps['B']} --data {tmp_path}/data --out {run}"
    (run / "endpoints.json").write_text(json.dumps(data))
    (run / "llpf_config.yaml").write_text(f"method: m2m\ndata:\n  source: {tmp_path}/data/digits\nseed: 0\n")
    return run


def test_the_card_follows_hub_conventions(runs):
    pub = Publication(root=(2, "mid: the middle"), license="mit", license_source="given with --license")
    card = build_model_card(runs["timm"], repo_id="me/path", publication=pub)
    data = card.data
    assert (data.license, data.pipeline_tag, data.library_name) == ("mit", "image-classification", "timm")
    assert data.base_model == ["org/a", "org/b"] and data.base_model_relation == "merge"
    results = {(r.metric_name, r.dataset_split, r.dataset_name): r.metric_value for r in data.eval_results}
    assert results == {
        ("max train loss along the path", "train", "digits"): SUMMARY["llpf"]["max_train_loss"],
        ("loss barrier of the path", "train", "digits"): SUMMARY["llpf"]["barrier"],
        ("min train accuracy along the path", "train", "digits"): SUMMARY["llpf"]["min_train_acc"],
        ("max test loss along the path", "test", "digits"): SUMMARY["llpf"]["test_loss_range"][1],
        ("min test accuracy along the path", "test", "digits"): SUMMARY["llpf"]["test_acc_range"][0],
    }
    text = card.text
    assert "**point 2 of 5** (tick 10, folder `points/t_000010`" in text and "chosen as mid: the middle" in text
    # The fixture's report has neither a table nor plots: the card's own, once.
    assert text.count("| barrier |") == 1 and text.count("![") == 1 and "Barrier 0.05 vs 1.8." in text
    assert "import hf_llpf.zoo  # registers the built-in architecture 'small_cnn'" in text
    assert 'folder = snapshot_download("me/path", allow_patterns=["points/t_000010/*"])' in text
    assert 'timm.create_model(f"local-dir:{folder}/points/t_000010", pretrained=True)' in text


def test_a_report_with_its_table_and_plots_is_not_repeated(runs, tmp_path):
    run = shutil.copytree(runs["timm"], tmp_path / "run")
    report = (
        "<!-- hf_llpf:report:start -->\n## Path evaluation\n\n| figure | LLPF | linear |\n|---|---|---|\n"
        "| barrier | 0.05 | 1.8 |\n\n![loss along the path](plots/loss.png)\n<!-- hf_llpf:report:end -->"
    )
    (run / "README.md").write_text(report + "\n")
    text = build_model_card(run, repo_id="me/path").text
    assert text.count("| barrier |") == 1 and text.count("![") == 1 and "## Summary" not in text


def test_a_card_without_report_has_one_table_with_no_raw_dict(runs, tmp_path):
    run = shutil.copytree(runs["bert"], tmp_path / "run")
    metrics = json.loads((run / "path_metrics.json").read_text())
    metrics["summary"]["llpf"]["worst_continuity_at"] = {"segment": 6, "from_tick": 6, "s": 0.2}
    (run / "path_metrics.json").write_text(json.dumps(metrics))
    card = build_model_card(run, repo_id="me/bert")
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "unknown"
    text = card.text
    assert text.count("## Summary") == 1 and text.count("![loss](plots/loss.png)") == 1
    assert "| worst continuity at | segment 6, from tick 6, s 0.2 | – |" in text and "{'" not in text
    assert 'AutoModelForSequenceClassification.from_pretrained("me/bert")' in text
    assert 'AutoModelForSequenceClassification.from_pretrained("me/bert", subfolder="points/t_000010")' in text
    assert "The repo root holds no model" in text  # no Publication: nothing said about a root model


def test_published_files_put_a_complete_model_at_the_root(runs):
    files, pub = published_files(runs["bert"], repo_id="me/bert")
    assert pub.root[0] == 2 and pub.root[1].startswith("mid: the point nearest the middle of the path by arc length")
    point = runs["bert"] / "points" / "t_000010"
    for name in ("config.json", "model.safetensors"):
        assert files[name] == point / name
    card = files["README.md"].decode()
    assert "**point 2 of 5**" in card and 'from_pretrained("me/bert")  # the model at the root' in card
    assert published_files(runs["bert"], repo_id="me/bert", root_point="none")[1].root is None
    assert "model.safetensors" not in published_files(runs["bert"], repo_id="me/bert", root_point=None)[0]


def test_no_published_file_holds_a_path_of_the_machine(local_run, tmp_path):
    files, _ = published_files(local_run, repo_id="me/local")
    for rel, value in files.items():
        data = value if isinstance(value, bytes) else value.read_bytes()
        assert str(tmp_path).encode() not in data, rel
        assert os.getcwd().encode() + b"/" not in data, rel
    endpoints = json.loads(files["endpoints.json"])
    assert (endpoints["A"]["id"], endpoints["B"]["id"]) == ("seed0", "seed1") and endpoints["A"]["source"] == "local"
    assert endpoints["command"] == "hf-llpf connect seed0 seed1 --data data --out run"
    card = files["README.md"].decode()
    assert "- **A**: `seed0` (a local folder; revision `local:0123456789abcdef`" in card
    assert "source: digits" in files["llpf_config.yaml"].decode()


def test_a_machine_path_that_slips_through_is_refused_by_name(tmp_path):
    forbidden = machine_paths(tmp_path / "run")
    assert str(tmp_path) + os.sep in forbidden and os.getcwd().rstrip(os.sep) + os.sep in forbidden
    check_no_machine_paths({"ok.json": b'{"a": "plots/loss.png"}', "w.bin": str(tmp_path).encode()}, forbidden)
    with pytest.raises(RunDirectoryError, match=r"published file 'x\.yaml' holds a path of this machine"):
        check_no_machine_paths({"x.yaml": f"out: {tmp_path}/run\n".encode()}, forbidden)
    # The scrubber keeps what is not a path: URLs, relative names, code, fractions.
    text = 'see https://arxiv.org/abs/2505.02604, plots/loss.png, f"{folder}/points/t_1", a / b'
    assert scrub_text(text, {}) == text
    assert scrub_text("data: /home/me/sets/digits and C:\\Users\\me\\ep", {}) == "data: digits and ep"


def test_license_from_the_endpoints_or_given(tmp_path):
    def ep(name, license=None):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if license:
            (folder / "README.md").write_text(f"---\nlicense: {license}\n---\n# card\n")
        return {"id": str(folder), "revision": "local:0123"}

    assert resolve_license({"A": ep("a", "mit"), "B": ep("b", "mit")}) == ("mit", "the license of both endpoints")
    with pytest.raises(ConfigError, match=r"licenses differ \(A: 'mit', B: 'apache-2.0'\).*--license"):
        resolve_license({"A": ep("a", "mit"), "B": ep("c", "apache-2.0")})
    assert resolve_license({"A": ep("a", "mit"), "B": ep("c", "apache-2.0")}, license="mit")[0] == "mit"
    assert resolve_license({"A": ep("a", "mit"), "B": ep("d")})[0] == "unknown"  # one unknown: not a guess
    assert (
        resolve_license({"A": {"id": "org/a", "revision": "f" * 40, "license": "bsd"}, "B": ep("d")})[0] == "unknown"
    )
    with pytest.raises(ConfigError, match=r"license='MIT License': not a license id"):
        resolve_license({}, license="MIT License")


def test_include_exclude_and_every(runs):
    files, _ = published_files(runs["timm"], repo_id="me/p", exclude=["plots/*"], every=4)
    assert not any(f.startswith("plots/") for f in files) and "README.md" in files
    assert {f.split("/")[1] for f in files if f.startswith("points/")} == {"t_000000", "t_000010", "t_000020"}
    metrics = json.loads(files["path_metrics.json"])
    assert [p["point"] for p in metrics["points"]] == ["points/t_000000", "points/t_000010", "points/t_000020"]
    assert metrics["summary"] == SUMMARY  # the summary is the whole path's
    assert len(files["path_metrics.csv"].decode().splitlines()) == 1 + 3
    only, _ = published_files(runs["timm"], repo_id="me/p", include=["points/*"], root_point=None)
    assert set(only) == {
        "README.md",
        *(f"points/t_0000{t:02d}/{n}" for t in (0, 5, 10, 15, 20) for n in ("config.json", "model.safetensors")),
    }
    with pytest.raises(ConfigError, match="include=3"):
        published_files(runs["timm"], include=3)


def test_batches_send_points_first_and_the_card_last():
    files = ["README.md", "path_metrics.json", "config.json", "model.safetensors"]
    files += [f"points/t_{i:06d}/model.safetensors" for i in range(5)]
    groups = batches(files, 4)
    assert [len(g) for g in groups] == [4, 4, 1]
    assert groups[0][0] == "points/t_000000/model.safetensors" and groups[-1] == ["README.md"]
    assert groups[1][-1] == "path_metrics.json"
    remote = ["README.md", "points/t_000009/model.safetensors", "plots/old.png", "model.safetensors", "notes.txt"]
    keep = {"README.md", "model.safetensors"}
    assert stale_files(remote, keep) == ["plots/old.png", "points/t_000009/model.safetensors"]
    assert stale_files(remote, keep, exclude=["plots/*"]) == ["points/t_000009/model.safetensors"]
