import json

import pytest
import timm
import torch
from tiny_models import tiny_bert

from hf_llpf.errors import CorruptCheckpointError, EndpointMismatchError, OfflineError, UnknownNameError
from hf_llpf.models.endpoints import as_endpoint, check_endpoints_match, create_model, load_endpoint, save_model

torch.set_num_threads(1)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "name,args,shape",
    [
        ("small_cnn", {}, (2, 1, 8, 8)),
        ("lenet5", {}, (2, 1, 28, 28)),
        ("cifar_resnet18", {"width": 8}, (2, 3, 32, 32)),
    ],
)
def test_builtin_models_round_trip_through_plain_timm(tmp_path, name, args, shape):
    model = create_model(name, num_classes=10, **args)
    endpoint = as_endpoint(model)
    assert endpoint.kind == "timm"
    save_model(model, tmp_path, kind="timm", arch=endpoint.arch)
    loaded = load_endpoint(tmp_path)
    assert _same_weights(model, loaded.model) and loaded.revision.startswith("local:")
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert _same_weights(model, plain)
    assert plain(torch.randn(*shape)).shape == (2, 10)


def test_timm_name_plus_safetensors_file(tmp_path):
    model = create_model("resnet10t", num_classes=3)
    save_model(model, tmp_path, kind="timm", arch={"architecture": "resnet10t", "model_args": {"num_classes": 3}})
    loaded = load_endpoint(tmp_path / "model.safetensors", arch="resnet10t", model_args={"num_classes": 3})
    assert _same_weights(model, loaded.model)
    with pytest.raises(UnknownNameError, match="--arch"):
        load_endpoint(tmp_path / "model.safetensors")


def test_transformers_folder_round_trip(tmp_path):
    from transformers import BertForSequenceClassification

    model = tiny_bert(0)
    endpoint = as_endpoint(model)
    assert endpoint.kind == "transformers"
    save_model(model, tmp_path, kind="transformers", arch=endpoint.arch)
    loaded = load_endpoint(tmp_path)
    assert loaded.kind == "transformers" and _same_weights(model, loaded.model)
    plain = BertForSequenceClassification.from_pretrained(tmp_path)
    assert _same_weights(model, plain)


def test_corrupt_and_truncated_safetensors(tmp_path):
    model = create_model("small_cnn")
    save_model(model, tmp_path, kind="timm", arch={"architecture": "small_cnn", "model_args": {}})
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        load_endpoint(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptCheckpointError):
        load_endpoint(tmp_path)


def test_pickle_weights_are_never_read(tmp_path):
    model = create_model("small_cnn")
    save_model(model, tmp_path, kind="timm", arch={"architecture": "small_cnn", "model_args": {}})
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CorruptCheckpointError, match="only safetensors"):
        load_endpoint(tmp_path)


def test_different_architectures_name_the_first_differing_tensor():
    with pytest.raises(EndpointMismatchError, match=r"conv1.weight.*\(16, 1, 3, 3\).*\(8, 1, 3, 3\)"):
        check_endpoints_match(create_model("small_cnn"), create_model("small_cnn", width=8))
    with pytest.raises(EndpointMismatchError, match="head.weight"):
        check_endpoints_match(create_model("small_cnn", num_classes=10), create_model("small_cnn", num_classes=5))


def test_unknown_model_and_endpoint_specs(tmp_path):
    with pytest.raises(UnknownNameError, match="small_cnn"):
        create_model("smal_cnn")
    with pytest.raises(UnknownNameError, match="config.json"):
        load_endpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UnknownNameError, match="model_type"):
        load_endpoint(tmp_path)


def test_hub_id_while_offline_says_how_to_pass_a_folder():
    with pytest.raises(OfflineError, match="local folder"):
        load_endpoint("someone/some-model@main")
