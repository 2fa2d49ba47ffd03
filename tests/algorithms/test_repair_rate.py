"""The repair's learning rate is halved when a whole repair budget leaves a point above the ceiling."""

import pytest
import torch
from conftest import connect_killed_after, state_equal
from test_certify import QUICK, own_probe_loss, probe_examples

import hf_llpf
from hf_llpf.algorithms.base import MIN_LR_SCALE
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import read_metrics

torch.set_num_threads(1)


def _hard_config(small_cnn_pair, digits):
    """A ceiling just above the endpoints and 4 repair iterations a tick: budgets run out."""
    ends = [own_probe_loss(load_endpoint(p).model, *probe_examples(digits)) for p in small_cnn_pair]
    return {**QUICK, "loss_ceiling": max(ends) * 1.01, "repair_budget": 4, "max_backtracks": 1}


@pytest.mark.slow
def test_a_spent_budget_halves_the_repair_rate_down_to_its_floor(small_cnn_pair, digits, tmp_path, capsys):
    from hf_llpf.reporting.logging import configured

    config = _hard_config(small_cnn_pair, digits)
    with configured("info"):
        path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    assert path.summary["run"]["repair_lr_scale"] == MIN_LR_SCALE  # 1 -> 1/2 -> 1/4 -> 1/8, then kept
    out, err = capsys.readouterr()
    lowered = [line for line in err.splitlines() if "the repair's lr is now" in line]
    assert len(lowered) == 3 and all(line.startswith("hf-llpf: ") for line in lowered)  # a warning on stderr
    assert "lr is now" not in out
    easy = hf_llpf.connect(*small_cnn_pair, digits, config=QUICK, run_dir=tmp_path / "e", progress=False)
    ticks = read_metrics(easy.root)["ticks"]
    assert max(r["iters"] for r in ticks) < QUICK.get("repair_budget", 150)  # no budget ran out ...
    assert easy.summary["run"]["repair_lr_scale"] == 1.0  # ... so the rate is the configured one


def test_scale_lr_keeps_each_groups_own_factor():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    trainer = RepairTrainer(model, batches, lr=0.02, momentum=0.0, weight_decay=0.0, min_iters=1, max_iters=1,
                            loss_threshold=0.0, per_tensor_lr=True)  # fmt: skip
    trainer.set_lr_factors([0], [0.5])
    trainer.scale_lr(0.25)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] == pytest.approx(0.02 * 0.5 * 0.25) and lrs[1] == pytest.approx(0.02 * 0.25)
    trainer.set_lr_factors([0], [2.0])  # AngleConformal's next factors apply on top of the scale
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 2.0 * 0.25)


@pytest.mark.slow
def test_a_run_whose_rate_was_lowered_resumes_bit_identically(small_cnn_pair, digits, tmp_path, monkeypatch):
    config = _hard_config(small_cnn_pair, digits)
    whole = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    connect_killed_after(3, monkeypatch, *small_cnn_pair, digits, config=config, run_dir=run, progress=False)
    resumed = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=run, exist="resume", progress=False)
    assert read_metrics(resumed.root)["ticks"] == read_metrics(whole.root)["ticks"]
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i
