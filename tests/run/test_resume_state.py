"""Resume state is safetensors + JSON (hf_llpf.run.state): round trip, damaged files, and no unpickling."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.errors import CorruptCheckpointError
from hf_llpf.run import atomic_write_text
from hf_llpf.run import state as resume_state
from hf_llpf.run.seeding import rng_state

torch.set_num_threads(1)

FAST = {
    "step_r": 0.25,
    "min_iters": 1,
    "max_iters": 2,
    "checkpoint_every": 2,
    "arrival_tol": 0.05,
    "loss_ceiling": None,  # run-directory mechanics: plain LLPF (certified resume: test_certify.py)
}


def test_round_trip_of_every_kind_of_value(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),  # integer keys, nested lists, floats
        "rng": rng_state(),  # tuples, a NumPy uint32 array, a uint8 tensor
        "loop": {"tick": 3, "scale": 0.5, "nan": float("nan"), "flags": [True, False], "none": None},
    }
    resume_state.save(tmp_path, state, write_text=atomic_write_text)
    back = resume_state.load(tmp_path)
    assert back["optimizer"]["state"].keys() == {0, 1}
    assert torch.equal(
        back["optimizer"]["state"][0]["momentum_buffer"], state["optimizer"]["state"][0]["momentum_buffer"]
    )
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    assert back["rng"]["numpy"][1].dtype == np.uint32
    assert back["loop"]["tick"] == 3 and back["loop"]["flags"] == [True, False] and back["loop"]["none"] is None
    assert np.isnan(back["loop"]["nan"])
    # Saving again replaces the tensor file; only the one state.json names is left.
    resume_state.save(tmp_path, state, write_text=atomic_write_text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "tensors-2.safetensors"]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/hf_llpf_pickle_payload_ran"


@pytest.fixture()
def finished_run(small_cnn_pair, digits, tmp_path):
    run = tmp_path / "run"
    hf_llpf.connect(*small_cnn_pair, digits, config=FAST, run_dir=run, progress=False)
    return run


def test_a_checkpoint_is_written_from_the_live_tensors_copying_only_views_and_tied_names(tmp_path):
    # A whole tensor is written as it is (no copy of the model and the momentum beside them while the file is
    # written); a view and the second name of a tied weight are copied (safetensors refuses shared storage).
    emb, whole = torch.randn(10, 4), torch.randn(3, 5)
    view = whole[:, :2]
    skeleton, tensors = resume_state.encode({"emb": emb, "head": emb, "whole": whole, "view": view})
    written = {k: tensors[v["__tensor__"]] for k, v in skeleton.items()}

    def storage(t):
        return t.untyped_storage().data_ptr()

    assert storage(written["emb"]) == storage(emb) and storage(written["whole"]) == storage(whole)
    for key, source in (("head", emb), ("view", view)):
        assert storage(written[key]) != storage(source) and torch.equal(written[key], source)
    resume_state.save(tmp_path, {"emb": emb, "head": emb, "view": view}, write_text=atomic_write_text)
    back = resume_state.load(tmp_path)
    assert torch.equal(back["emb"], emb) and torch.equal(back["head"], emb) and torch.equal(back["view"], view)


def test_a_pickled_checkpoint_is_never_loaded(finished_run, small_cnn_pair, digits):
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    ckpt = finished_run / "checkpoint"
    for p in ckpt.iterdir():
        p.unlink()
    (ckpt / "state.pt").write_bytes(pickle.dumps({"done": False, "x": _Payload()}))
    with pytest.raises(CorruptCheckpointError, match=r"state\.pt is a pickled checkpoint.*--overwrite"):
        hf_llpf.connect(*small_cnn_pair, digits, config=FAST, run_dir=finished_run, exist="resume", progress=False)
    assert not os.path.exists(MARKER), "the pickle payload ran"
    assert (ckpt / "state.pt").is_file()  # nothing was deleted


@pytest.mark.parametrize(
    "damage",
    [
        lambda ckpt: (ckpt / "state.json").write_text("{not json"),
        lambda ckpt: (ckpt / "state.json").write_bytes(b"\xff\xfe\x00garbage"),
        lambda ckpt: next(ckpt.glob("tensors-*.safetensors")).write_bytes(b"short"),
        lambda ckpt: (ckpt / "state.json").write_text(
            json.dumps({**json.loads((ckpt / "state.json").read_text()), "tensors": "../../x"})
        ),
    ],
    ids=["malformed-json", "not-utf8", "truncated-tensors", "tensor-file-outside"],
)
def test_a_damaged_checkpoint_is_a_clear_error_from_the_cli(finished_run, small_cnn_pair, capsys, damage):
    damage(finished_run / "checkpoint")
    before = sorted(p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*"))
    args = ["connect", str(small_cnn_pair[0]), str(small_cnn_pair[1]), "--data", "digits", "--out", str(finished_run)]
    flags = [f"{k}={'null' if v is None else v}" for k, v in FAST.items()]
    assert main([*args, "--resume", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert "resume checkpoint" in err and "damaged" in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*")) == before


def test_a_checkpoint_removes_only_its_own_earlier_tensor_files(tmp_path):
    """A name of another form, or a link named as the tool's files are, stays in checkpoint/ (its target untouched);
    the tool's own earlier file goes."""
    from hf_llpf.run import state as run_state
    from hf_llpf.run.rundir import atomic_write_text

    folder, outside = tmp_path / "checkpoint", tmp_path / "outside.safetensors"
    run_state.save(folder, {"w": torch.ones(2)}, write_text=atomic_write_text)
    outside.write_bytes(b"theirs")
    (folder / "tensors-notes.safetensors").write_bytes(b"mine")
    (folder / "tensors-5.safetensors").symlink_to(outside)
    run_state.save(folder, {"w": torch.zeros(2)}, write_text=atomic_write_text)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["state.json", "tensors-5.safetensors", "tensors-6.safetensors", "tensors-notes.safetensors"]
    assert outside.read_bytes() == b"theirs" and (folder / "tensors-notes.safetensors").read_bytes() == b"mine"
    assert torch.equal(run_state.load(folder)["w"], torch.zeros(2))
