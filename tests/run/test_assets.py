"""Companion files (tokenizer, processor, generation config) and timm data configs travel with every point.

Collected from the endpoints (allow-list only: no weights, no pickle, no code), compared, stored once in
``assets/``, added to published points, the root and exports; timm points' ``pretrained_cfg`` is the run's data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from text_fixtures import bert_endpoints, gpt2_endpoints, word_tokenizer, write_reviews
from tiny_models import tiny_bert

import hf_llpf
from hf_llpf.errors import DataMismatchError, RunDirectoryError
from hf_llpf.hub.export import export_point
from hf_llpf.models.endpoints import as_endpoint, create_model, load_endpoint, save_model
from hf_llpf.models.timm_config import run_data_config, with_data_config
from hf_llpf.run.assets import (
    Assets,
    collect_folder,
    endpoint_files,
    merge_assets,
    read_assets,
    run_assets,
    tokenizer_files,
    write_assets,
)

torch.set_num_threads(1)
LABELS = ("folder-a", "folder-b")


@pytest.fixture(autouse=True)
def _process_state():
    """The warnings go through accelerate's logger, which needs the process state (connect creates it)."""
    from accelerate import PartialState

    PartialState()


def _tok_files(**options) -> dict[str, bytes]:
    return tokenizer_files(None, word_tokenizer(**options))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """Two tiny BERT and two tiny GPT-2 endpoints saved with their tokenizer, and a reviews parquet."""
    root = tmp_path_factory.mktemp("assets")
    bert_endpoints(root, steps=4)
    gpt2_endpoints(root, steps=4)
    write_reviews(root / "reviews.parquet", n=48)
    return root


def test_only_companion_files_are_collected_never_weights_pickle_or_code(tmp_path):
    folder = tmp_path / "model"
    word_tokenizer().save_pretrained(folder)
    (folder / "generation_config.json").write_text('{"max_new_tokens": 5}')
    (folder / "preprocessor_config.json").write_text('{"size": 8}')
    for name in ("pytorch_model.bin", "model.safetensors", "tokenization_evil.py", "config.json", "evil.pkl"):
        (folder / name).write_bytes(b"x" * 200)
    got = collect_folder(folder)
    assert sorted(got) == [
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_a_companion_file_linking_outside_is_refused(tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(outside, folder / "tokenizer.json")
    with pytest.raises(RunDirectoryError, match="tokenizer.json.*outside"):
        collect_folder(folder)
    run = tmp_path / "run"
    (run / "assets").mkdir(parents=True)
    os.symlink(outside, run / "assets" / "vocab.txt")
    with pytest.raises(RunDirectoryError, match="vocab.txt"):
        read_assets(run)


def test_files_that_agree_travel_once_and_are_recorded(tmp_path):
    files = {**_tok_files(), "generation_config.json": b'{"max_new_tokens": 5}'}
    assets = merge_assets(files, dict(files), labels=LABELS)
    assert assets.files == files and set(assets.origin.values()) == {"A and B"} and assets.notes == []
    write_assets(tmp_path, assets)
    manifest = json.loads((tmp_path / "assets" / "manifest.json").read_text())
    assert manifest["files"]["tokenizer.json"]["from"] == "A and B" and manifest["notes"] == []
    assert {p.name for p in (tmp_path / "assets").iterdir()} == {*files, "manifest.json"}
    assert {k: v.read_bytes() for k, v in read_assets(tmp_path).items()} == files  # the manifest is not an asset


def test_other_files_that_differ_keep_a_and_are_named(caplog):
    a = {"generation_config.json": b'{"max_new_tokens": 5}', "preprocessor_config.json": b"{}"}
    b = {"generation_config.json": b'{"max_new_tokens": 9}'}
    assets = merge_assets(a, b, labels=LABELS)
    assert assets.files == a and assets.origin == {"generation_config.json": "A", "preprocessor_config.json": "A"}
    differs = "generation_config.json differs between endpoint A and endpoint B: A's is kept"
    assert any(differs in n for n in assets.notes)
    assert any("preprocessor_config.json is only in endpoint A's folder" in n for n in assets.notes)


def test_tokenizer_files_differing_in_bytes_only_keep_a():
    a = _tok_files()
    config = json.loads(a["tokenizer_config.json"])
    b = {**a, "tokenizer_config.json": json.dumps(config, indent=4).encode()}  # rewritten, same tokenizer
    assets = merge_assets(a, b, labels=LABELS)
    assert assets.files == a and assets.origin["tokenizer_config.json"] == "A"
    assert any("tokenizer_config.json differs" in n and "read text the same way" in n for n in assets.notes)


def test_a_tokenizer_json_differing_only_in_its_call_state_is_the_same_file_and_fingerprint():
    from hf_llpf.data.tokenizer import tokenizer_fingerprint

    tok = word_tokenizer()
    a = tokenizer_files(None, tok)
    before = tokenizer_fingerprint(tok)
    tok("a call with truncation sets the backend's state", truncation=True, max_length=4, padding="max_length")
    called = tokenizer_files(None, tok)
    assert json.loads(called["tokenizer.json"])["truncation"] is not None  # what a fine-tune's save holds
    assert tokenizer_fingerprint(tok) == before
    assets = merge_assets(a, called, labels=LABELS)
    assert assets.origin["tokenizer.json"] == "A and B" and assets.notes == []


def test_tokenizers_that_read_text_differently_are_an_error_naming_both_endpoints():
    a, b = _tok_files(), _tok_files(extra=("zebra",))
    with pytest.raises(DataMismatchError, match=r"tokenizer.json.*folder-a.*folder-b|folder-a.*folder-b.*tokenizer"):
        merge_assets(a, b, labels=LABELS)
    with pytest.raises(DataMismatchError, match="data.tokenizer="):
        merge_assets(a, b, labels=LABELS)


def test_the_given_tokenizer_travels_and_the_endpoints_are_not_compared():
    a, b, given = _tok_files(), _tok_files(extra=("zebra",)), _tok_files(lowercase=True)
    a["generation_config.json"] = b"{}"
    assets = merge_assets(a, b, labels=LABELS, tokenizer=given)
    assert {k: assets.files[k] for k in given} == given
    assert assets.origin["tokenizer.json"] == "data.tokenizer" and assets.origin["generation_config.json"] == "A"


def test_endpoints_without_a_folder_have_no_companion_files(tmp_path):
    assert endpoint_files(as_endpoint(tiny_bert(0)), label="A") == {}
    save_model(create_model("small_cnn"), tmp_path / "cnn", kind="timm", arch={"architecture": "small_cnn"})
    assert endpoint_files(load_endpoint(tmp_path / "cnn"), label="A") == {}


def test_run_assets_use_data_tokenizer_when_given(text):
    from hf_llpf.config import DataConfig
    from hf_llpf.run.inputs import load_for_endpoints

    ea, eb = load_endpoint(text / "bert_0"), load_endpoint(text / "bert_1")
    spec = DataConfig(source=str(text / "reviews.parquet"))
    own = run_assets(ea, eb, load_for_endpoints(spec, ea, eb))
    assert own.origin["tokenizer.json"] == "A and B"
    other = text / "other_tok"
    word_tokenizer(extra=("zebra",)).save_pretrained(other)
    given = DataConfig(source=str(text / "reviews.parquet"), tokenizer=str(other))
    assets = run_assets(ea, eb, load_for_endpoints(given, ea, eb))
    assert assets.origin["tokenizer.json"] == "data.tokenizer"
    assert assets.files["tokenizer.json"] == (other / "tokenizer.json").read_bytes()


def test_an_exported_text_point_is_a_complete_model_for_plain_pipeline(text, tmp_path):
    from transformers import AutoTokenizer, pipeline

    config = {"max_ticks": 2, "min_iters": 1, "max_iters": 2, "batch_size": 16, "loss_ceiling": None}
    run = tmp_path / "run"
    hf_llpf.connect(text / "bert_0", text / "bert_1", str(text / "reviews.parquet"), config=config, run_dir=run,
                    progress=False)  # fmt: skip
    assert sorted(p.name for p in (run / "assets").iterdir()) == ["manifest.json", "tokenizer.json",
                                                                  "tokenizer_config.json"]  # fmt: skip
    assert not (run / "points" / "t_000000" / "tokenizer.json").exists()  # stored once, not per point
    out = tmp_path / "mid"
    result = export_point(run, point="mid", out_dir=out)
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= set(result["files"])
    classify = pipeline("text-classification", model=str(out))
    got = classify("good great film")
    assert len(got) == 1 and got[0]["label"].startswith("LABEL_")
    assert AutoTokenizer.from_pretrained(out)("good film")["input_ids"][0] == 2  # [CLS]


def test_a_causal_lm_point_keeps_its_generation_config(text, tmp_path):
    from hf_llpf.hub.push import published_files

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["good great film fine"] * 80))
    config = {"max_ticks": 2, "min_iters": 1, "max_iters": 2, "batch_size": 8, "loss_ceiling": None,
              "data": {"max_length": 8}}  # fmt: skip
    run = tmp_path / "run"
    hf_llpf.connect(text / "gpt2_0", text / "gpt2_1", str(corpus), config=config, run_dir=run, progress=False)
    files, _ = published_files(run, root_point="mid")
    for where in ("", "points/t_000001/"):
        assert {f"{where}generation_config.json", f"{where}tokenizer.json"} <= set(files), where
    assert not any(rel.startswith("assets/") for rel in files)  # inside the points and at the root, not as a folder


def test_timm_points_describe_the_run_data(tmp_path):
    import timm

    from hf_llpf.data.bundle import load_data

    bundle = load_data("digits", mean=(0.4,), std=(0.2,), image_size=12)
    example = bundle.loader("train", batch_size=4, seed=0).first_batch(4)
    cfg = run_data_config(bundle, example, bundle.config)
    assert cfg["input_size"] == (1, 12, 12) and cfg["mean"] == (0.4,) and cfg["std"] == (0.2,)
    assert run_data_config(None, (torch.zeros(2, 3, 9, 9), torch.zeros(2)), bundle.config)["input_size"] == (3, 9, 9)
    model = create_model("test_efficientnet", in_chans=1, num_classes=10)
    ep = with_data_config(as_endpoint(model), cfg)
    save_model(model, tmp_path / "p", kind="timm", arch=ep.arch)
    written = json.loads((tmp_path / "p" / "config.json").read_text())
    assert not {"hf_hub_id", "url", "tag", "license", "origin_url"} & set(written["pretrained_cfg"])
    plain = timm.create_model(f"local-dir:{tmp_path / 'p'}", pretrained=True)
    data = timm.data.resolve_data_config(model=plain)
    assert data["input_size"] == (1, 12, 12) and tuple(data["mean"]) == (0.4,) and tuple(data["std"]) == (0.2,)
    assert data["crop_pct"] == 1.0 and data["interpolation"] == "bilinear"
    assert plain.num_classes == 10 and load_endpoint(tmp_path / "p").arch["model_args"] == ep.arch["model_args"]
    assert with_data_config(as_endpoint(tiny_bert(0)), cfg).arch == as_endpoint(tiny_bert(0)).arch


def test_write_assets_replaces_the_folder_whole(tmp_path):
    write_assets(tmp_path, Assets({"vocab.txt": b"a\nb\n"}, {"vocab.txt": "A"}))
    write_assets(tmp_path, Assets({"merges.txt": b"#v\n"}, {"merges.txt": "A"}))
    assert sorted(read_assets(tmp_path)) == ["merges.txt"]
    assert not any(p.name.startswith(".tmp_") for p in Path(tmp_path).iterdir())
    write_assets(tmp_path / "none", Assets())
    assert not (tmp_path / "none").exists() or not (tmp_path / "none" / "assets").exists()


def test_a_baseline_path_keeps_the_companion_files_and_timm_data_config(text, tmp_path):
    from hf_llpf.baselines.build import build_baseline

    data = str(text / "reviews.parquet")
    build_baseline("linear", text / "bert_0", text / "bert_1", data, run_dir=tmp_path / "lin", points=3)
    assert sorted(read_assets(tmp_path / "lin")) == ["tokenizer.json", "tokenizer_config.json"]
    torch.manual_seed(0)
    a, b = create_model("small_cnn"), create_model("small_cnn")
    build_baseline("linear", a, b, "digits", run_dir=tmp_path / "cnn", points=3, config={"data": {"std": [0.3]}})
    written = json.loads((tmp_path / "cnn" / "points" / "t_000001" / "config.json").read_text())
    assert written["pretrained_cfg"]["input_size"] == [1, 8, 8] and written["pretrained_cfg"]["std"] == [0.3]
    assert not (tmp_path / "cnn" / "assets").exists()  # nothing to carry for timm endpoints


def test_the_cards_show_how_to_load_the_tokenizer(tmp_path):
    from hub_fixtures import make_run_dir

    from hf_llpf.hub.push import published_files

    run = make_run_dir(tmp_path / "bert", kind="transformers")
    files, _ = published_files(run, repo_id="org/x")
    assert 'AutoTokenizer.from_pretrained("org/x", subfolder="points/t_000010")' in files["README.md"].decode()
    export_point(run, point="mid", out_dir=tmp_path / "mid")
    assert 'AutoTokenizer.from_pretrained("ORG/NAME")' in (tmp_path / "mid" / "README.md").read_text()
    timm_run = make_run_dir(tmp_path / "timm", kind="timm")
    assert "AutoTokenizer" not in published_files(timm_run, repo_id="org/y")[0]["README.md"].decode()


def test_an_image_processor_describing_other_inputs_than_the_run_data_is_named(tmp_path):
    from types import SimpleNamespace

    proc = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.5, 0.5, 0.5], "size": {"height": 224, "width": 224}}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(proc))
    ea, eb = (SimpleNamespace(source=str(tmp_path / n), kind="transformers", revision=None) for n in "ab")
    bundle = SimpleNamespace(task="image", input_shape=(3, 8, 8), config=SimpleNamespace(mean=(0.5,), std=(0.5,)))
    assets = run_assets(ea, eb, bundle)
    assert assets.origin == {"preprocessor_config.json": "A and B"}
    (note,) = assets.notes
    assert "image_mean [0.485, 0.456, 0.406] (the run's data: [0.5, 0.5, 0.5])" in note and "size 224x224" in note
    assert "image_std" not in note  # that one agrees
