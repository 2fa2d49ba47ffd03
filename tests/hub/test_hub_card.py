"""What a push publishes, offline: the card by Hub conventions, the model at the root, no path of the machine,
the license, the file selection, and the batches of the upload."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml
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
        "timm": make_run_dir(base / "timm", kind="timm", hub_ids=("org/a", "org/b"), evaluated=True),
        "bert": make_run_dir(base / "bert", kind="transformers", command=None, report=False, evaluated=True),
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


def metadata(text: str) -> dict:
    """The card's YAML metadata, parsed."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("## ")]


def own_index(name: str, row: dict, task: str, dataset: str = "digits") -> list[dict]:
    """The model-index of a model whose own figures are ``row`` (train and test, each with its split)."""

    def result(split, loss, acc, label):
        return {
            "task": {"type": task},
            "dataset": {"name": dataset, "type": dataset, "split": split},
            "metrics": [
                {"type": "loss", "value": row[loss], "name": f"{label} loss"},
                {"type": "accuracy", "value": row[acc], "name": f"{label} accuracy"},
            ],
        }

    train, test = (
        result("train", "eval_train_loss", "eval_train_acc", "train"),
        result("test", "test_loss", "test_acc", "test"),
    )
    return [{"name": name, "results": [train, test]}]


def rows(run) -> list[dict]:
    return json.loads((run / "path_metrics.json").read_text())["points"]


def test_the_card_follows_hub_conventions(runs):
    pub = Publication(root=(2, "mid: the middle"), license="mit", license_source="given with --license")
    text = str(build_model_card(runs["timm"], repo_id="me/path", publication=pub))
    # The model-index holds the root model's own figures (point 2), not the path's aggregates.
    assert metadata(text) == {
        "license": "mit",
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "base_model": ["org/a", "org/b"],
        "base_model_relation": "merge",
        "tags": ["llpf", "mode-connectivity", "merge"],
        "model-index": own_index("path", rows(runs["timm"])[2], "image-classification"),
    }
    assert sections(text) == [
        "## The model at the root",
        "## The path",
        "## Evaluation report",  # the report section kept from README.md
        "## Intended use",
        "## Limitations",
        "## Load a point",
        "## Reproduce",
    ]
    assert "**point 2 of 5** (tick 10, folder `points/t_000010`" in text and "chosen as mid: the middle" in text
    assert '`timm.create_model("hf-hub:me/path", pretrained=True)` loads it' in text
    assert "| train loss | 0.31 | `digits`, split `train`, eval mode |" in text
    assert "| test accuracy | 88.00% | `digits`, split `test` |" in text
    # The path's figures beside linear's, and the verdict, in the text; the fixture's report has neither table nor
    # plots: the card's own, once.
    assert text.count("| barrier | 0.05 | 1.8 |") == 1 and text.count("![") == 1 and "Barrier 0.05 vs 1.8." in text
    assert "| min train accuracy | 91.00% | 35.00% |" in text
    verdict = (
        "**verdict: not certified: the run records no loss ceiling; the path's maximum train loss 0.31 is not above "
        "linear interpolation's 2.1 on the same data; its minimum train accuracy 91.00% is not below linear "
        "interpolation's 35.00%**"
    )
    assert text.count(verdict) == 1
    assert "import hf_llpf.zoo  # registers the built-in architecture 'small_cnn'" in text
    assert 'folder = snapshot_download("me/path", allow_patterns=["points/t_000010/*"])' in text
    assert 'timm.create_model(f"local-dir:{folder}/points/t_000010", pretrained=True)' in text


def test_a_local_data_file_is_named_in_the_text_only(runs, tmp_path):
    run = shutil.copytree(runs["bert"], tmp_path / "run")
    (run / "llpf_config.yaml").write_text(f"method: m2m\ndata:\n  source: {tmp_path}/data/reviews.parquet\n")
    text = str(build_model_card(run, repo_id="me/bert", publication=Publication(root=(2, "mid"))))
    meta = metadata(text)
    assert "datasets" not in meta and "model-index" not in meta and "reviews" not in text.split("---\n", 2)[1]
    assert "Data: `reviews.parquet`." in text and str(tmp_path) not in text
    assert "Its own figures:\n\n| figure | value | data |" in text  # the root's figures, in the text only
    assert "| train accuracy | 95.00% | `reviews.parquet`, split `train`, eval mode |" in text
    assert "- The data, `reviews.parquet`, is a local file or folder and is not published" in text


def test_every_point_branch_card_loads_its_own_revision(runs):
    options = {"repo_id": "me/bert", "point_revisions": True}
    main = published_files(runs["bert"], **options)[0]["README.md"].decode()
    branch = published_files(runs["bert"], root_point=1, branch="t_000005", **options)[0]["README.md"].decode()
    auto = "AutoModelForSequenceClassification"
    assert f'`{auto}.from_pretrained("me/bert")` loads it' in main
    assert f'model = {auto}.from_pretrained("me/bert")  # the model at the root (see above)' in main
    assert f'point = {auto}.from_pretrained("me/bert", revision="t_000005")  # or its branch' not in main
    assert f'point = {auto}.from_pretrained("me/bert", revision="t_000010")  # or its branch' in main
    assert (
        "This is branch `t_000005`: its repo root is a complete model in the endpoints' format: **point 1 of 5**"
        in branch
    )
    assert f'`{auto}.from_pretrained("me/bert", revision="t_000005")` loads it' in branch
    assert (
        f'model = {auto}.from_pretrained("me/bert", revision="t_000005")  # the model at the root of this branch'
        in branch
    )
    assert 'AutoTokenizer.from_pretrained("me/bert", revision="t_000005")' in branch
    assert (
        f'{auto}.from_pretrained("me/bert")`' not in branch and f'{auto}.from_pretrained("me/bert")  #' not in branch
    )
    # Each card's model-index holds its own root's figures.
    assert metadata(branch)["model-index"] == own_index("bert", rows(runs["bert"])[1], "text-classification")
    assert metadata(main)["model-index"] == own_index("bert", rows(runs["bert"])[2], "text-classification")


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
    metrics["summary"]["llpf"]["worst_continuity_at"] = {"segment": 6, "from_tick": 6, "to_tick": 8, "s": 0.2}
    (run / "path_metrics.json").write_text(json.dumps(metrics))
    card = build_model_card(run, repo_id="me/bert")
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "unknown"
    text = card.text
    assert text.count("## The path") == 1 and text.count("![loss](plots/loss.png)") == 1
    assert "| worst continuity loss | 0.33 (segment 6, ticks 6→8, s=0.20) | — |" in text and "{'" not in text
    assert 'AutoModelForSequenceClassification.from_pretrained("me/bert")' in text
    assert 'AutoModelForSequenceClassification.from_pretrained("me/bert", subfolder="points/t_000010")' in text
    # No Publication: nothing said about a root model, and no model-index (it holds the root model's figures).
    assert "The repo root holds no model" in text and "model-index" not in metadata(str(card))


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
