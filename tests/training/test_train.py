import json

import pytest
import timm
import torch
from transformers import AutoModel  # noqa: F401  (imported so a broken transformers install fails here)

from hf_llpf.cli import main
from hf_llpf.config import TrainRecipe
from hf_llpf.errors import DataMismatchError
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.training.endpoint import train_endpoint

torch.set_num_threads(1)


def test_same_seed_gives_identical_files_and_loader_reads_them(tmp_path, digits):
    recipe = TrainRecipe(seed=0, epochs=2)
    train_endpoint(recipe, out_dir=tmp_path / "a", data=digits, progress=False)
    train_endpoint(recipe, out_dir=tmp_path / "b", data=digits, progress=False)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    other, _ = train_endpoint(TrainRecipe(seed=1, epochs=2), data=digits, progress=False)
    loaded = load_endpoint(tmp_path / "a")
    assert not torch.equal(loaded.model.conv1.weight, other.model.conv1.weight)
    plain = timm.create_model(f"local-dir:{tmp_path / 'a'}", pretrained=True)
    assert torch.equal(plain.head.weight, loaded.model.head.weight)
    metrics = json.loads((tmp_path / "a/metrics.json").read_text())
    assert set(metrics) >= {"train", "test", "iterations"} and metrics["iterations"] == 2 * 23


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_small_cnn_reaches_98_percent_on_digits(digits, seed):
    _, metrics = train_endpoint(TrainRecipe(seed=seed), data=digits, progress=False)
    assert metrics["test"]["accuracy"] >= 0.98
    assert metrics["train"]["loss"] < 0.05


def test_labels_outside_the_head_are_refused(digits):
    with pytest.raises(DataMismatchError, match=r"num_classes=5"):
        train_endpoint(TrainRecipe(model_args={"num_classes": 5}, epochs=1), data=digits, progress=False)


def test_cli_train_writes_model_and_metrics(tmp_path, capsys):
    assert main(["train", "small_cnn", "--data", "digits", "--seed", "2", "--out", str(tmp_path), "epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn seed 2" in out and (tmp_path / "model.safetensors").is_file()
    assert main(["train", "--out", str(tmp_path), "epoch=1"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
