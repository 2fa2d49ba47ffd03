"""Storage options: points in bf16/fp16 (judged as stored), sharded safetensors for large points."""

import json

import pytest
import safetensors
import torch
from conftest import state_equal
from tiny_models import tiny_bert, tiny_gpt2

import hf_llpf
from hf_llpf.config import ConnectConfig, build
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import as_endpoint, create_model, load_endpoint, save_model
from hf_llpf.models.weights import INDEX_NAME, WEIGHTS_NAME, read_weights, stored_dtype, weight_files
from hf_llpf.run import RunWriter, read_metrics
from hf_llpf.run.storage import PointStorage, round_to_storage
from tests.algorithms.test_certify import QUICK, own_probe_loss, probe_examples

torch.set_num_threads(1)


def file_dtypes(folder) -> dict[str, str]:
    """Each tensor's dtype as the safetensors headers of a point folder say (no tensor is loaded)."""
    out = {}
    for f in weight_files(folder):
        with safetensors.safe_open(str(f), framework="pt") as handle:
            out.update({k: handle.get_slice(k).get_dtype() for k in handle.keys()})  # noqa: SIM118
    return out


def rounded(model, dtype=torch.bfloat16):
    import copy

    model = copy.deepcopy(model)
    round_to_storage(model, dtype)
    return model


@pytest.fixture(scope="module")
def bf16_run(small_cnn_pair, digits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bf16") / "run"
    path = hf_llpf.connect(*small_cnn_pair, digits, config={**QUICK, "point_dtype": "bf16"}, run_dir=run_dir,
                           progress=False)  # fmt: skip
    return path, run_dir


@pytest.mark.slow  # the bf16 run (a whole certified connect) is shared by these three
def test_a_bf16_run_stores_bf16_points_and_says_so(bf16_run):
    path, run_dir = bf16_run
    assert len(path) >= 3
    for i in range(len(path)):
        dtypes = file_dtypes(path.point_dir(i))
        floating = {k: v for k, v in dtypes.items() if not k.endswith("num_batches_tracked")}
        assert set(floating.values()) == {"BF16"}, f"point {i}"
        assert {v for k, v in dtypes.items() if k.endswith("num_batches_tracked")} <= {"I64"}  # integers untouched
    run = read_metrics(run_dir)["summary"]["run"]
    assert (run["point_dtype"], run["endpoint_dtype"], run["max_shard_size"]) == ("bfloat16", "float32", "5GB")


@pytest.mark.slow  # the bf16 run (a whole certified connect) is shared by these three
def test_the_certified_probe_losses_are_those_of_the_stored_points(bf16_run, small_cnn_pair, digits):
    path, run_dir = bf16_run
    x, y = probe_examples(digits)
    cert = read_metrics(run_dir)["summary"]["run"]["certification"]
    assert cert["certified"]
    a, b = (load_endpoint(p).model for p in small_cnn_pair)
    # The ends are the endpoints rounded to bf16, and the ceiling was set from them.
    assert cert["endpoint_probe_losses"] == pytest.approx([own_probe_loss(rounded(m), x, y) for m in (a, b)])
    assert state_equal(path.state_dict_at(0), rounded(a).state_dict())
    assert state_equal(path.state_dict_at(-1), rounded(b).state_dict())
    for i, row in enumerate(path.metrics):
        model = path.model_at(i)  # bf16 on disk, read back as float32
        assert next(model.parameters()).dtype == torch.float32
        assert row["probe_loss"] == pytest.approx(own_probe_loss(model, x, y), rel=1e-5, abs=1e-7), f"point {i}"


@pytest.mark.slow  # the bf16 run (a whole certified connect) is shared by these three
def test_the_evaluation_reads_the_stored_points_and_the_report_names_their_dtype(bf16_run):
    path, run_dir = bf16_run
    result = hf_llpf.evaluate_run(path, train_subset=256, linear_points=3, continuity_k=1, continuity_subset=64)
    summary = read_metrics(run_dir)["summary"]
    assert summary["evaluation"]["point_dtype"] == "bfloat16"
    top = result["summary"]["llpf"]["max_train_loss"]
    readme = (run_dir / "README.md").read_text()
    assert "Points are stored in bfloat16 (the endpoints are float32" in readme
    assert f"max train loss {top:.4g}" in readme


def test_without_a_ceiling_the_working_model_goes_on_from_the_stored_points(small_cnn_pair, digits, tmp_path):
    config = {"step_r": 0.5, "arrival_tol": 0.05, "loss_ceiling": None, "point_dtype": "fp16", "max_iters": 4}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "run", progress=False)
    b = load_endpoint(small_cnn_pair[1]).model
    assert stored_dtype(path.point_dir(len(path) // 2)) == "float16"
    assert state_equal(path.state_dict_at(-1), rounded(b, torch.float16).state_dict())
    assert path.summary["run"]["point_dtype"] == "float16"


def test_auto_keeps_the_endpoints_dtype():
    model = create_model("small_cnn")
    storage = PointStorage.from_config(ConnectConfig())
    assert storage.dtype is None and not storage.rounds(model)
    assert storage.summary(model)["point_dtype"] == "float32"
    ep = as_endpoint(model)
    assert storage.endpoint(ep, owned=False) is ep


def test_a_module_the_caller_passed_is_copied_not_rounded():
    model = create_model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ep = PointStorage(torch.bfloat16).endpoint(as_endpoint(model), owned=False)
    assert state_equal(model.state_dict(), before)
    assert ep.model is not model and not state_equal(ep.model.state_dict(), before)
    assert ep.describe()["sha256"] == as_endpoint(model).describe()["sha256"]  # endpoints.json names it as given


def test_fp16_refuses_a_value_it_cannot_hold():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = 1e6
    with pytest.raises(ConfigError, match=r"'weight' holds values up to 1e\+06.*point_dtype=bf16"):
        round_to_storage(model, torch.float16)


def test_bad_storage_settings_are_refused_with_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        build(ConnectConfig, {"point_dtype": "fp8", "max_shard_size": "5 GiB"})
    text = str(err.value)
    assert "point_dtype='fp8': Input should be 'auto', 'bf16' or 'fp16'" in text
    assert "max_shard_size='5 GiB': expected a positive number of bytes or digits with a unit KB, MB, GB or TB" in text


# ---- sharding ---------------------------------------------------------------------------------------------------


def shards_of(folder) -> list[str]:
    index = json.loads((folder / INDEX_NAME).read_text())
    return sorted(set(index["weight_map"].values()))


def test_a_timm_point_above_the_shard_size_is_sharded_and_loads_back_bit_identically(tmp_path):
    model = create_model("small_cnn").eval()
    ep = as_endpoint(model)
    save_model(model, tmp_path / "p", kind="timm", arch=ep.arch, max_shard_size=20_000)
    assert not (tmp_path / "p" / WEIGHTS_NAME).exists()
    names = shards_of(tmp_path / "p")
    assert len(names) > 2 and all((tmp_path / "p" / n).is_file() for n in names)
    back = load_endpoint(tmp_path / "p")
    assert back.kind == "timm" and state_equal(back.model.state_dict(), model.state_dict())


def test_a_plain_module_point_is_sharded_and_read_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 4))
    save_model(model, tmp_path / "p", kind="module", arch={}, dtype=torch.bfloat16, max_shard_size="4KB")
    assert len(shards_of(tmp_path / "p")) >= 2
    state = read_weights(tmp_path / "p")
    assert state_equal(state, {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})  # fmt: skip


def test_a_transformers_point_is_sharded_in_bf16_and_loads_back(tmp_path):
    model = tiny_bert(0)
    save_model(model, tmp_path / "p", kind="transformers", arch={}, dtype=torch.bfloat16, max_shard_size="2KB")
    assert len(shards_of(tmp_path / "p")) >= 2
    # config.json names the stored dtype: plain from_pretrained builds the point in bf16 instead of upcasting it.
    assert json.loads((tmp_path / "p" / "config.json").read_text())["dtype"] == "bfloat16"
    assert set(file_dtypes(tmp_path / "p").values()) <= {"BF16", "I64"}
    plain = load_endpoint(tmp_path / "p").model
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}
    back = load_endpoint(tmp_path / "p", dtype=torch.float32).model  # float32, holding the bf16 numbers
    assert next(back.parameters()).dtype == torch.float32
    assert state_equal(back.state_dict(), rounded(model).state_dict())


def test_a_run_reads_its_bf16_transformers_points_back_in_the_endpoints_dtype(tmp_path):
    model = tiny_bert(0)
    storage = PointStorage(torch.bfloat16)
    with RunWriter(tmp_path / "run", storage=storage) as writer:
        rel = writer.write_point(0, model, as_endpoint(model))
        writer.write_metrics([{"tick": 0, "point": rel}], [], {"run": storage.summary(model)})
    path = hf_llpf.run.RunPath(tmp_path / "run")
    assert json.loads((path.point_dir(0) / "config.json").read_text())["dtype"] == "bfloat16"
    back = path.model_at(0)  # judged in the endpoints' float32, as the run recorded them
    assert next(back.parameters()).dtype == torch.float32
    assert state_equal(back.state_dict(), rounded(model).state_dict())


def test_a_transformers_point_is_sharded_and_loads_back_bit_identically(tmp_path):
    model = tiny_gpt2(0)  # tied lm_head: written once, tied again on load
    save_model(model, tmp_path / "p", kind="transformers", arch={}, max_shard_size="10KB")
    assert len(shards_of(tmp_path / "p")) >= 2
    back = load_endpoint(tmp_path / "p").model
    assert state_equal(back.state_dict(), model.state_dict())


def test_a_run_writer_shards_points_and_the_path_reads_them(tmp_path):
    model = create_model("small_cnn").eval()
    ep = as_endpoint(model)
    with RunWriter(tmp_path / "run", storage=PointStorage(torch.bfloat16, 20_000)) as writer:
        rel = writer.write_point(0, model, ep)
        writer.write_metrics([{"tick": 0, "point": rel}], [])
    path = hf_llpf.run.RunPath(tmp_path / "run")
    assert (path.point_dir(0) / INDEX_NAME).is_file()
    assert state_equal(path.state_dict_at(0), rounded(model).state_dict())


def test_an_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    from hf_llpf.errors import RunDirectoryError

    model = create_model("small_cnn").eval()
    save_model(model, tmp_path / "p", kind="timm", arch=as_endpoint(model).arch, max_shard_size=20_000)
    index = json.loads((tmp_path / "p" / INDEX_NAME).read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "../elsewhere.safetensors"
    (tmp_path / "p" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(RunDirectoryError, match="'../elsewhere.safetensors' is refused"):
        load_endpoint(tmp_path / "p")


def test_a_run_directory_written_before_the_storage_settings_resumes(tmp_path):
    import yaml

    from hf_llpf.run.resume import check_same_run

    saved = ConnectConfig().model_dump(mode="json")
    del saved["point_dtype"], saved["max_shard_size"]  # what an earlier version wrote
    (tmp_path / "llpf_config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "endpoints.json").write_text(json.dumps({"A": None, "B": None}))
    ep = as_endpoint(create_model("small_cnn"))
    assert check_same_run(tmp_path, ConnectConfig(), ep, ep) == {}
    with pytest.raises(ConfigError, match="point_dtype was 'auto'"):
        check_same_run(tmp_path, ConnectConfig(point_dtype="bf16"), ep, ep)


def test_the_disk_estimate_counts_stored_bytes_once_per_tensor_and_warns_above_its_size():
    from types import SimpleNamespace

    from torch import nn

    from hf_llpf.run.storage import PointStorage, disk_estimate, point_bytes

    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 1000))
    model[1].weight = model[0].weight  # tied: stored once
    assert point_bytes(model, None) == (1000 * 1000 + 2 * 1000) * 4
    assert point_bytes(model, torch.bfloat16) == (1000 * 1000 + 2 * 1000) * 2
    config = SimpleNamespace(step_r=0.25, save_every=1, max_ticks=2000)
    line, large = disk_estimate(model, PointStorage(), method="m2m", stages=10, config=config)
    assert line == (
        "each point takes 4.0 MB on disk; 10 stages at step_r=0.25 and a point every 1 tick(s) make roughly "
        "41–121 points: 164.3 MB–485.0 MB"
    )
    assert not large
    line, large = disk_estimate(model, PointStorage(), method="m2m", stages=1000, config=config)
    assert large and "2001–2001 points: 8.02 GB–8.02 GB; point_dtype=bf16 halves that" in line  # max_ticks caps
    assert disk_estimate(model, PointStorage(), method="cross-sphere", stages=10, config=config) == (
        "each point takes 4.0 MB on disk",
        False,
    )
