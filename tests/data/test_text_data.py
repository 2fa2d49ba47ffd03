"""Text classification and causal-LM data from a data spec, end to end through the CLI; the task inferred from the
endpoints and refused on a mismatch; column types checked; tokenizers compared; the data recorded as read."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch
import yaml
from text_fixtures import bert_endpoints, gpt2_endpoints, reviews, word_tokenizer, write_reviews, write_text_file
from tiny_models import tiny_bert

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.config import DataConfig
from hf_llpf.data.bundle import load_data
from hf_llpf.errors import ConfigError, DataMismatchError, UnknownNameError
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run.inputs import load_for_endpoints

torch.set_num_threads(1)
FAST = ["max_ticks=3", "min_iters=2", "max_iters=4", "--no-progress"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Two tiny BERT and two tiny GPT-2 endpoints with their tokenizer, a reviews parquet and a text file."""
    root = tmp_path_factory.mktemp("text")
    bert_endpoints(root)
    gpt2_endpoints(root)
    write_reviews(root / "reviews.parquet")
    write_text_file(root / "corpus.txt")
    return root


def _split(path, suffix: str = "parquet") -> datasets.DatasetDict:
    """The fixed 80/20 split of a one-split source, as hf_llpf makes it (split_seed 0)."""
    loaded = datasets.load_dataset(suffix, data_files={"train": str(path)})["train"]
    if suffix == "text":
        loaded = loaded.filter(lambda r: bool(r["text"].strip()))
    return loaded.train_test_split(test_size=0.2, seed=0)


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_text_classification_cli_connect_then_evaluate(w, monkeypatch, capsys):
    monkeypatch.chdir(w)
    assert main(["connect", "bert_0", "bert_1", "--data", "reviews.parquet", "--out", "run", *FAST]) == 0
    data = yaml.safe_load((w / "run" / "llpf_config.yaml").read_text())["data"]
    split = _split(w / "reviews.parquet")
    assert {k: data[k] for k in ("source", "task", "text_column", "label_column", "tokenizer", "max_length")} == {
        "source": "reviews.parquet",
        "task": "text-classification",
        "text_column": "text",
        "label_column": "label",
        "tokenizer": "bert_0",
        "max_length": 32,  # the tokenizer's and the model's limit
    }
    rec = data["recorded"]
    assert (rec["train_examples"], rec["test_examples"], rec["num_classes"]) == (128, 32, 3)
    assert rec["texts"] == {"train": 128, "test": 32}
    capsys.readouterr()
    assert main(["evaluate", "run", "--continuity", "0", "--linear-points", "3"]) == 0
    assert "32 test" in capsys.readouterr().out
    metrics = hf_llpf.run.read_metrics(w / "run")
    # Endpoint A's test loss and accuracy, computed here by hand with its own tokenizer: the same numbers.
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

    tok = AutoTokenizer.from_pretrained(w / "bert_0")
    model = BertForSequenceClassification.from_pretrained(w / "bert_0").eval()
    test = split["test"]
    enc = [tok(t, truncation=True, max_length=32) | {"labels": y} for t, y in zip(test["text"], test["label"])]
    batch = DataCollatorWithPadding(tok)(enc)
    with torch.no_grad():
        out = model(**batch)
    first = metrics["points"][0]
    assert first["test_loss"] == pytest.approx(out.loss.item(), abs=1e-5)
    assert first["test_acc"] == pytest.approx((out.logits.argmax(-1) == batch["labels"]).float().mean().item())
    assert first["test_loss"] < math.log(3)  # the endpoints learned something: below chance
    from hf_llpf.hub.card import build_model_card

    card = str(build_model_card(w / "run"))
    assert (
        f"Data: `reviews.parquet`: text-classification; splits `train`/`test`: 128/32 examples; columns `text`, "
        f"`label`; tokenizer `bert_0` (fingerprint `{rec['tokenizer_sha256']}` of what decides its ids); fingerprints "
        f"`{rec['train_fingerprint']}`/`{rec['test_fingerprint']}`." in card
    )
    assert "digits" not in card


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_causal_lm_cli_connect_then_evaluate(w, monkeypatch, capsys):
    monkeypatch.chdir(w)
    args = ["connect", "gpt2_0", "gpt2_1", "--data", "corpus.txt", "--out", "lm", "data.max_length=16", *FAST]
    assert main(args) == 0
    data = yaml.safe_load((w / "lm" / "llpf_config.yaml").read_text())["data"]
    assert (data["task"], data["text_column"], data["max_length"], data["label_column"]) == (
        "causal-lm",
        "text",
        16,
        None,
    )
    capsys.readouterr()
    assert main(["evaluate", "lm", "--continuity", "0", "--linear-points", "3"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity (exp of the mean next-token cross-entropy)" in printed
    # Blocks of 16 tokens of the joined test texts (EOS after each), by hand: the same loss and token accuracy.
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(w / "gpt2_0")
    texts = _split(w / "corpus.txt", "text")["test"]["text"]
    ids = [i for t in texts for i in [*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    blocks = torch.tensor([ids[k : k + 16] for k in range(0, len(ids) - 15, 16)])
    assert data["recorded"]["test_examples"] == len(blocks)
    model = GPT2LMHeadModel.from_pretrained(w / "gpt2_0").eval()
    with torch.no_grad():
        out = model(input_ids=blocks, labels=blocks)
    hits = (out.logits[:, :-1].argmax(-1) == blocks[:, 1:]).float().mean().item()
    points = hf_llpf.run.read_metrics(w / "lm")["points"]
    assert points[0]["test_loss"] == pytest.approx(out.loss.item(), abs=1e-5)
    assert points[0]["test_acc"] == pytest.approx(hits, abs=1e-6)
    worst = max(math.exp(p["eval_train_loss"]) for p in points)
    assert f"max train {worst:.4g} on the path" in printed


def test_train_fine_tunes_a_text_endpoint_and_saves_its_tokenizer(w, monkeypatch, capsys):
    monkeypatch.chdir(w)
    args = ["train", "bert_0", "--data", "reviews.parquet", "--out", "ft", "epochs=1", "batch_size=16"]
    assert main([*args, "optimizer=adamw", "lr=0.001"]) == 0
    assert {"tokenizer.json", "model.safetensors", "metrics.json"} <= {p.name for p in (w / "ft").iterdir()}
    saved = __import__("json").loads((w / "ft" / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None  # saved as loaded, not as the training called it
    metrics = __import__("json").loads((w / "ft" / "metrics.json").read_text())
    assert metrics["iterations"] == 8  # 128 training reviews, batches of 16, one epoch
    from hf_llpf.evaluation import score

    bundle = load_for_endpoints(DataConfig(source="reviews.parquet"), load_endpoint(w / "ft"))
    again = score(load_endpoint(w / "ft").model, bundle.eval_loader("test", indices=None, batch_size=256))
    assert metrics["test"]["loss"] == pytest.approx(again["loss"], abs=1e-6)
    assert main(["train", "small_cnn", "--data", "reviews.parquet", "--out", "cnn"]) == 2
    err = capsys.readouterr().err
    assert "the model (small_cnn) is an image classification model, but data 'reviews.parquet' hold text" in err


def test_groups_traces_a_text_endpoint_on_its_tokenized_data(w, monkeypatch, capsys):
    from hf_llpf.run.inputs import example_for, example_plan

    monkeypatch.chdir(w)
    assert main(["groups", "bert_0", "--data", "reviews.parquet"]) == 0
    printed = capsys.readouterr().out
    model, batch = example_for("bert_0", data="reviews.parquet")
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape[0] == 8
    plan = example_plan(model, batch, label="bert_0")
    dummy = example_plan(model, model.dummy_inputs, label="bert_0")
    assert plan.to_json()["stages"] == dummy.to_json()["stages"]  # the same stages as the model's own inputs
    assert printed.count("bert.encoder.layer.0") >= 1


def test_task_mismatch_names_both(w, monkeypatch, capsys):
    monkeypatch.chdir(w)
    assert main(["connect", "bert_0", "bert_1", "--out", "no_data", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "endpoint A (bert_0) is a text classification model" in err and "data 'digits' hold image" in err
    assert not (w / "no_data").exists()
    assert main(["groups", "small_cnn", "--data", "reviews.parquet"]) == 2
    err = capsys.readouterr().err
    assert "is an image classification model" in err and "'reviews.parquet' hold text classification data" in err
    assert "text (string), label (int64)" in err


def test_column_types_refused(w, tmp_path):
    tok = word_tokenizer()
    ds = reviews(40).map(lambda r: tok(r["text"]))
    ds.to_parquet(str(tmp_path / "tokenized.parquet"))
    with pytest.raises(
        DataMismatchError, match=r"image_column 'input_ids' holds list of int32 values \(shape \(7,\): token ids"
    ):
        load_data(str(tmp_path / "tokenized.parquet"), image_column="input_ids", task="image")
    grid = [np.full((4, 4), 2023 + i, dtype=np.int64) for i in range(20)]  # token ids laid out as a grid
    datasets.Dataset.from_dict({"image": grid, "label": [0] * 20}).to_parquet(str(tmp_path / "ids.parquet"))
    with pytest.raises(DataMismatchError, match=r"'image' holds values from 2023 to 204\d; expected pixel"):
        load_data(str(tmp_path / "ids.parquet"))
    a = load_endpoint(w / "bert_0")
    spec = DataConfig(source=str(w / "reviews.parquet"), label_column="text")
    with pytest.raises(DataMismatchError, match="label_column 'text' holds string values"):
        load_for_endpoints(spec, a)
    spec = DataConfig(source=str(w / "reviews.parquet"), text_column="label")
    with pytest.raises(DataMismatchError, match="text_column 'label' holds int64 values"):
        load_for_endpoints(spec, a)
    five = reviews(60).map(lambda r, i: {"label": i % 5}, with_indices=True)
    five.to_parquet(str(tmp_path / "five.parquet"))
    with pytest.raises(DataMismatchError, match=r"labels up to 4, but the model's head has 3 outputs"):
        load_for_endpoints(DataConfig(source=str(tmp_path / "five.parquet")), a)


def test_columns_detected_or_listed(w, tmp_path):
    a = load_endpoint(w / "bert_0")
    base = reviews(50)
    two = base.add_column("title", [f"t{i}" for i in range(50)]).rename_column("text", "body")
    two.to_parquet(str(tmp_path / "two.parquet"))
    listed = r"several string columns \(columns: body \(string\), label \(int64\), title \(string\)\); pass"
    with pytest.raises(UnknownNameError, match=listed):
        load_for_endpoints(DataConfig(source=str(tmp_path / "two.parquet")), a)
    bundle = load_for_endpoints(DataConfig(source=str(tmp_path / "two.parquet"), text_column="body"), a)
    assert (bundle.config.text_column, bundle.config.text_pair_column) == ("body", None)
    pairs = base.rename_column("text", "sentence1").add_column("sentence2", base["text"][::-1])
    pairs.to_parquet(str(tmp_path / "pairs.parquet"))
    bundle = load_for_endpoints(DataConfig(source=str(tmp_path / "pairs.parquet")), a)
    assert (bundle.config.text_column, bundle.config.text_pair_column) == ("sentence1", "sentence2")
    first = bundle.train_features[0]["input_ids"]
    assert first.count(3) == 2  # [CLS] a [SEP] b [SEP]: the pair went through the tokenizer as a pair


def test_endpoints_tokenizers_must_agree(w, tmp_path):
    import shutil

    a = load_endpoint(w / "bert_0")
    for name, tok, message in (
        ("extra", word_tokenizer(extra=("zzz",)), "token 'zzz' is in B's tokenizer only"),
        ("lower", word_tokenizer(lowercase=True), None),  # same vocabulary, same texts: agree
    ):
        folder = tmp_path / name
        shutil.copytree(w / "bert_1", folder)
        tok.save_pretrained(folder)
        spec = DataConfig(source=str(w / "reviews.parquet"))
        if message is None:
            assert load_for_endpoints(spec, a, load_endpoint(folder)).config.tokenizer == str(w / "bert_0")
        else:
            with pytest.raises(DataMismatchError, match=message):
                load_for_endpoints(spec, a, load_endpoint(folder))
    swapped = tmp_path / "swapped"
    shutil.copytree(w / "bert_1", swapped)
    vocab = word_tokenizer().get_vocab()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    good, bad = vocab["good"], vocab["bad"]
    vocab["good"], vocab["bad"] = bad, good
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(swapped)
    with pytest.raises(DataMismatchError, match=f"token 'good' is id {good} in A's tokenizer and id {bad} in B's"):
        load_for_endpoints(DataConfig(source=str(w / "reviews.parquet")), a, load_endpoint(swapped))
    no_tok = tmp_path / "no_tok"
    tiny_bert(0, vocab_size=len(vocab)).save_pretrained(no_tok)
    with pytest.raises(ConfigError, match="has no tokenizer next to its weights; .* or pass data.tokenizer="):
        load_for_endpoints(DataConfig(source=str(w / "reviews.parquet")), load_endpoint(no_tok))


def test_text_loader_resumes_at_the_same_batch(w):
    bundle = load_for_endpoints(DataConfig(source=str(w / "reviews.parquet")), load_endpoint(w / "bert_0"))
    loader = bundle.loader("train", batch_size=16, seed=3)
    stream = loader.stream()
    for _ in range(11):  # past the first epoch's 8 batches
        next(stream)
    state = loader.state_dict()
    expected = [next(stream) for _ in range(3)]
    again = bundle.loader("train", batch_size=16, seed=3)
    again.load_state_dict(state)
    got = [b for b, _ in zip(again.stream(), range(3))]
    for x, y in zip(expected, got):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert state == {"epoch": 1, "position": 3, "seed": 3}


def test_python_dataset_run_records_what_it_was(w, tmp_path):
    tok = word_tokenizer()
    ds = reviews(32).map(lambda r: tok(r["text"], padding="max_length", max_length=16), remove_columns=["text"])
    ds = ds.rename_column("label", "labels").with_format("torch")
    a, b = (load_endpoint(w / f"bert_{s}").model for s in (0, 1))
    config = {"max_ticks": 2, "min_iters": 2, "max_iters": 3, "batch_size": 16}
    hf_llpf.connect(a, b, ds, config=config, run_dir=tmp_path / "run", progress=False)
    data = yaml.safe_load((tmp_path / "run" / "llpf_config.yaml").read_text())["data"]
    assert data["source"] == "<Dataset>"
    assert data["recorded"] == {
        "given_as": "Dataset",
        "train_examples": 32,
        "train_fingerprint": ds._fingerprint,
        "columns": ["labels", "input_ids", "attention_mask"],
    }
    with pytest.raises(ConfigError, match=r"was built on data passed from Python \(<Dataset>"):
        hf_llpf.evaluate_run(tmp_path / "run", template=a)


def test_mixed_image_sizes_and_palette_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        folder = tmp_path / "imgs" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        size = 6 + 2 * (i % 3)
        rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        (rgb.convert("P") if i % 2 else rgb).save(folder / f"{i}.png")
    with pytest.raises(DataMismatchError, match="holds images of 3 sizes .* pass data.image_size=N"):
        load_data(str(tmp_path / "imgs"))
    bundle = load_data(str(tmp_path / "imgs"), image_size=8)
    assert bundle.input_shape == (3, 8, 8)  # palette PNGs keep their colours: three channels
    # An 8x8 image is unchanged by the per-image resize; a palette image equals its RGB conversion.
    ds = bundle.train
    k = next(i for i in range(len(ds)) if ds[i]["image"].size == (8, 8) and ds[i]["image"].mode == "P")
    rgb = np.asarray(ds[k]["image"].convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(bundle.train_tensors.images[k].numpy(), rgb)


def test_text_run_killed_mid_way_resumes_bit_identically(w, tmp_path, monkeypatch):
    from conftest import connect_killed_after, state_equal

    a, b = load_endpoint(w / "bert_0"), load_endpoint(w / "bert_1")
    data = str(w / "reviews.parquet")
    config = {"max_ticks": 6, "min_iters": 2, "max_iters": 3, "checkpoint_every": 2, "batch_size": 16}
    config |= {"method": "m2m", "repair_budget": 6}  # a walk (the straight line is certified for these twins)
    whole = hf_llpf.connect(a, b, data, config=config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, a, b, data, config=config, run_dir=run, progress=False) == 2
    resumed = hf_llpf.connect(a, b, data, config=config, run_dir=run, exist="resume", progress=False)
    strip = lambda rows: [{c: v for c, v in r.items() if c != "point"} for r in rows]  # noqa: E731
    assert resumed.ticks == whole.ticks and strip(resumed.metrics) == strip(whole.metrics)
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """48 colour and palette PNGs of three sizes in two classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for i in range(48):
        folder = root / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        size = 6 + 2 * (i % 3)
        rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        (rgb.convert("P") if i % 4 == 1 else rgb).save(folder / f"{i}.png")
    return root


def test_images_decoded_on_access_equal_the_in_memory_ones(image_folder):
    from hf_llpf.data.images import LazyImages

    memory = load_data(str(image_folder), image_size=8, decode="memory", augment=True)
    lazy = load_data(str(image_folder), image_size=8, decode="on_access", augment=True)
    assert isinstance(lazy.train_tensors.images, LazyImages) and isinstance(memory.train_tensors.images, torch.Tensor)
    assert lazy.input_shape == memory.input_shape == (3, 8, 8)
    a, b = memory.loader("train", batch_size=5, seed=2).stream(), lazy.loader("train", batch_size=5, seed=2).stream()
    for _ in range(12):  # across an epoch boundary, augmented
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    from hf_llpf.evaluation import make_eval_sets

    sets_m, sets_l = (make_eval_sets(d, train_subset=20, continuity_subset=7, batch_size=6) for d in (memory, lazy))
    for part in ("train", "test", "continuity"):
        for (xa, ya), (xb, yb) in zip(getattr(sets_m, part), getattr(sets_l, part), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_images_converted_to_the_models_channels(image_folder, tmp_path):
    from PIL import Image

    from hf_llpf.models.endpoints import as_endpoint, create_model

    grey_model = as_endpoint(create_model("small_cnn", num_classes=2, in_chans=1))
    bundle = load_for_endpoints(DataConfig(source=str(image_folder), image_size=8), grey_model)
    assert bundle.input_shape == (1, 8, 8)
    ds = bundle.train
    k = next(i for i in range(len(ds)) if ds[i]["image"].size == (8, 8))
    expected = np.asarray(ds[k]["image"].convert("L"))
    assert np.array_equal(bundle.train_tensors.images[k][0].numpy(), expected)
    greys = tmp_path / "greys"
    for i in range(10):
        (greys / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6), 20 * i, dtype=np.uint8)).save(greys / f"c{i % 2}" / f"{i}.png")
    colour_model = as_endpoint(create_model("small_cnn", num_classes=2, in_chans=3))
    bundle = load_for_endpoints(DataConfig(source=str(greys)), colour_model)
    assert bundle.input_shape == (3, 6, 6)  # grey images repeated into three equal channels for an RGB model
    x = bundle.train_tensors.images[:4]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_lazily_decoded_run_killed_mid_way_resumes_bit_identically(image_folder, tmp_path, monkeypatch):
    from conftest import connect_killed_after, state_equal

    from hf_llpf.models.endpoints import as_endpoint, create_model

    a, b = (as_endpoint(create_model("small_cnn", num_classes=2, in_chans=3, width=4)) for _ in range(2))
    spec = DataConfig(source=str(image_folder), image_size=8, decode="on_access", augment=True)
    config = {"max_ticks": 6, "min_iters": 2, "max_iters": 3, "checkpoint_every": 2, "batch_size": 8}
    config |= {"method": "m2m", "repair_budget": 6}  # a walk, with its certified ticks
    whole = hf_llpf.connect(a, b, spec, config=config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, a, b, spec, config=config, run_dir=run, progress=False) == 2
    resumed = hf_llpf.connect(a, b, spec, config=config, run_dir=run, exist="resume", progress=False)
    strip = lambda rows: [{c: v for c, v in r.items() if c != "point"} for r in rows]  # noqa: E731
    assert resumed.ticks == whole.ticks and strip(resumed.metrics) == strip(whole.metrics)
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i
    recorded = yaml.safe_load((run / "llpf_config.yaml").read_text())["data"]
    got = (recorded["decode"], recorded["image_column"], recorded["recorded"]["train_examples"])
    assert (
        got == ("on_access", "image", 38) and recorded["recorded"]["test_examples"] == 10
    )  # 48 images, 20 % held out


def test_evaluate_warns_when_the_data_changed_since_the_run(w, tmp_path, caplog):
    import logging

    data = write_reviews(tmp_path / "reviews.parquet", n=60)
    a, b = load_endpoint(w / "bert_0"), load_endpoint(w / "bert_1")
    config = {"max_ticks": 2, "min_iters": 2, "max_iters": 2, "batch_size": 16}
    hf_llpf.connect(a, b, str(data), config=config, run_dir=tmp_path / "run", progress=False)
    options = {"continuity_k": 0, "linear_points": 2, "report": False}
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        hf_llpf.evaluate_run(tmp_path / "run", **options)
        assert not [r for r in caplog.records if "differ from what the run recorded" in r.getMessage()]
        write_reviews(data, n=60, seed=5)  # same path, other reviews
        hf_llpf.evaluate_run(tmp_path / "run", **options)
    changed = [r.getMessage() for r in caplog.records if "differ from what the run recorded" in r.getMessage()]
    assert len(changed) == 1 and "train_fingerprint, test_fingerprint" in changed[0]
