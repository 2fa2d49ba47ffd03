"""Per-stage records (``summary.run.stages``): the repair rounds each tick counts, and a resumed run's records."""

import pytest
import torch
from conftest import connect_killed_after, state_equal
from torch import nn

import hf_llpf
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.run import read_metrics

torch.set_num_threads(1)

# Certified (the automatic ceiling), with a backtrack in the first stage and a checkpoint every second tick.
CERTIFIED = {"step_r": 0.5, "arrival_tol": 0.05, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def mlp_pair(digits):
    """Two small MLPs trained from seeds 0 and 1 on the built-in digits (normalised as the data says)."""
    images, labels = digits.train_tensors.images, digits.train_tensors.labels
    x = (images.float() / 255.0 - 0.5) / 0.5
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(10):
            for i in range(0, len(labels), 64):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x[i : i + 64]), labels[i : i + 64]).backward()
                opt.step()
        models.append(m)
    return models


@pytest.fixture(scope="module")
def whole_run(mlp_pair, digits, tmp_path_factory):
    """The certified run, uninterrupted, with the repair trainer's calls counted from outside."""
    a, b = mlp_pair
    real, calls = RepairTrainer.repair, {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RepairTrainer, "repair", counted)
        run = tmp_path_factory.mktemp("stages") / "whole"
        path = hf_llpf.connect(a, b, digits, config=CERTIFIED, run_dir=run, progress=False)
    return path, calls["n"]


def test_every_call_of_the_repair_is_one_round_of_its_tick_and_stage(whole_run):
    path, calls = whole_run
    ticks, stages = read_metrics(path.root)["ticks"], path.summary["run"]["stages"]
    assert sum(r["repair_rounds"] for r in ticks) == sum(s["repair_rounds"] for s in stages) == calls
    for s in stages:
        rows = [r for r in ticks if r["stage"] == s["stage"]]
        assert s["repair_rounds"] == sum(r["repair_rounds"] for r in rows)
        assert s["sgd_iters"] == sum(r["iters"] for r in rows)
    # The case the records are for: a backtracked stage took more rounds than ticks (several per attempt).
    assert any(s["backtracks"] and s["repair_rounds"] > s["ticks"] for s in stages)


def test_a_run_killed_after_a_checkpoint_resumes_with_the_same_stage_records(whole_run, mlp_pair, digits, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    whole, _ = whole_run
    a, b = mlp_pair
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, a, b, digits, config=CERTIFIED, run_dir=run, progress=False) == 2
    on_disk, ticks = read_metrics(run)["ticks"], read_metrics(whole.root)["ticks"]
    assert on_disk == ticks[: len(on_disk)] and ticks[len(on_disk)]["stage"] == on_disk[-1]["stage"]  # mid-stage
    resumed = hf_llpf.connect(a, b, digits, config=CERTIFIED, run_dir=run, exist="resume", progress=False)
    assert resumed.summary["run"]["stages"] == whole.summary["run"]["stages"]
    assert read_metrics(resumed.root)["ticks"] == read_metrics(whole.root)["ticks"]
    assert len(resumed) == len(whole)
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i


def test_a_run_on_a_plain_list_of_batches_resumes_bit_for_bit(mlp_pair, digits, tmp_path, monkeypatch):
    """The caller's own batches (not a SeededLoader) continue where the killed run left them: a resume draws the
    batches an uninterrupted run would, across passes over the list."""
    a, b = mlp_pair
    images, labels = digits.train_tensors.images, digits.train_tensors.labels
    x = (images.float() / 255.0 - 0.5) / 0.5
    batches = [(x[i : i + 64], labels[i : i + 64]) for i in range(0, 64 * 5, 64)]  # 5 batches: many passes
    whole = hf_llpf.connect(a, b, batches, config=CERTIFIED, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, a, b, batches, config=CERTIFIED, run_dir=run, progress=False) == 2
    assert sum(r["iters"] for r in read_metrics(run)["ticks"]) % len(batches)  # killed in the middle of a pass
    resumed = hf_llpf.connect(a, b, batches, config=CERTIFIED, run_dir=run, exist="resume", progress=False)
    assert read_metrics(resumed.root)["ticks"] == read_metrics(whole.root)["ticks"]
    assert whole.summary["run"]["sgd_iters"] > 5  # the stream went round the list more than once
    assert len(resumed) == len(whole)
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i
