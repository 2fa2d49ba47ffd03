"""Sharded endpoints read by rows (hf_llpf.sharding.rows; docs/distributed.md, "Models larger than one
device"): the structure built without weights is the whole-loaded model's, the preparation's checks run on the
headers and on each process's rows. The two-process runs are in tests/sharding/test_sharding_engine.py."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import run_python

from hf_llpf.errors import EndpointMismatchError, OfflineError
from hf_llpf.models.endpoints import load_endpoint, save_model
from hf_llpf.run.storage import point_bytes
from hf_llpf.sharding.rows import RowsEndpoint, check_headers, load_structure, reads_by_rows

torch.set_num_threads(1)


@pytest.fixture
def gpt2_folder(tmp_path):
    from tiny_models import tiny_gpt2

    folder = tmp_path / "gpt2"
    tiny_gpt2(0, n_embd=16, vocab_size=61).save_pretrained(folder)
    return folder


@pytest.fixture
def timm_folder(tmp_path):
    """A built-in timm-format endpoint with BatchNorm buffers."""
    from hf_llpf.models.endpoints import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    model.train()(torch.randn(4, 1, 8, 8))  # running statistics away from their initial values
    arch = {"architecture": "small_cnn", "model_args": {"num_classes": 10, "in_chans": 1}}
    return save_model(model.eval(), tmp_path / "cnn", kind="timm", arch=arch)


def test_the_structure_is_the_whole_loaded_model_without_its_weights(gpt2_folder, timm_folder):
    for folder in (gpt2_folder, timm_folder):
        whole, rows = load_endpoint(str(folder)), load_structure(str(folder))
        assert isinstance(rows, RowsEndpoint) and rows.location == folder
        assert all(p.is_meta for p in rows.model.parameters())
        state, meta = whole.model.state_dict(), rows.model.state_dict()
        assert list(state) == list(meta) and all(state[k].shape == meta[k].shape for k in state)
        assert all(state[k].dtype == meta[k].dtype for k in state)
        # endpoints.json: the same entry, its sha256 streamed from the files a shard's rows at a time
        assert rows.describe() == whole.describe()
        assert (rows.kind, rows.arch, rows.revision) == (whole.kind, whole.arch, whole.revision)
        assert point_bytes(rows.model, None) == point_bytes(whole.model, None)
        check_headers(rows, label="A")
    gpt2 = load_structure(str(gpt2_folder)).model
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # the tie, as from_pretrained makes it


def test_headers_refuse_a_tensor_of_another_shape_or_a_missing_one(gpt2_folder):
    file = gpt2_folder / "model.safetensors"
    state = safetensors.torch.load_file(file)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:-1].clone()
    safetensors.torch.save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(EndpointMismatchError) as err:
        check_headers(load_structure(str(gpt2_folder)), label="B")
    assert str(err.value) == (
        f"endpoint B ({gpt2_folder}): tensor 'transformer.wpe.weight' has shape (31, 16) in its file; the model has "
        "(32, 16); allowed: the model's shape"
    )
    del state["transformer.wpe.weight"]
    safetensors.torch.save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(EndpointMismatchError, match=r"missing \['transformer.wpe.weight'\], unexpected \[\]"):
        check_headers(load_structure(str(gpt2_folder)), label="A")


def test_which_specs_are_read_by_rows(gpt2_folder, tmp_path):
    assert reads_by_rows([gpt2_folder, str(gpt2_folder)])
    assert reads_by_rows([str(gpt2_folder), "org/name@main"])  # a Hub id
    assert not reads_by_rows([gpt2_folder, torch.nn.Linear(2, 2)])  # a module: loaded as it is
    assert not reads_by_rows([gpt2_folder, str(gpt2_folder / "model.safetensors")])  # a bare file
    assert not reads_by_rows([gpt2_folder, "small_cnn"])  # a built-in name


_NAN_SCRIPT = """
import sys, torch, tempfile
torch.set_num_threads(1)
torch.distributed.init_process_group("gloo", init_method="file://" + sys.argv[3], rank=0, world_size=1)
from hf_llpf.sharding.rows import load_structure, sharded_start
from hf_llpf.errors import CorruptCheckpointError
ea, eb = load_structure(sys.argv[1]), load_structure(sys.argv[2])
try:
    sharded_start(ea, eb, torch.device("cpu"))
except CorruptCheckpointError as err:
    print("REFUSED", err)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # a process of its own (a process group): its imports alone take tens of seconds here
def test_a_non_finite_value_in_a_process_rows_is_refused(gpt2_folder, tmp_path):
    """The finite check runs on each process's rows, summed over the processes (one process here)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in gpt2_folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = safetensors.torch.load_file(bad / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, :2] = torch.tensor([float("nan"), float("inf")])
    safetensors.torch.save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    done = run_python(["-c", _NAN_SCRIPT, str(gpt2_folder), str(bad), str(tmp_path / "store")], timeout=300)
    assert f"REFUSED endpoint B ({bad}): 2 non-finite value(s) (NaN or inf); an endpoint must hold finite" in (
        done.stdout
    ), done.stdout


def test_a_hub_id_is_read_from_its_snapshot_as_the_whole_load_reads_it(gpt2_folder, tmp_path, monkeypatch):
    """A Hub id (here from an offline cache of the test's own, laid out as huggingface_hub keeps it): the structure
    names the repo as from_pretrained records it, its commit, and reads the snapshot's weights only inside the repo's
    folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--rowstest--gpt2"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for f in gpt2_folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    whole, rows = load_endpoint("rowstest/gpt2"), load_structure("rowstest/gpt2")
    assert isinstance(rows, RowsEndpoint)
    assert (rows.location, rows.allowed_root, rows.revision) == (snapshot, repo, sha)
    assert rows.arch == whole.arch and rows.arch["_name_or_path"] == "rowstest/gpt2"
    assert rows.describe() == whole.describe()
    with pytest.raises(OfflineError, match="rowstest/absent"):  # not in the cache, offline: the whole-load route's
        load_structure("rowstest/absent")
