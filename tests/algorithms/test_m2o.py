"""LLPF_M2O with AngleConformal learning rates, and cross-sphere paths (M2O then M2M)."""

import copy

import pytest
import torch
from conftest import connect_killed_after, state_equal
from torch import nn

import hf_llpf
from hf_llpf import geometry
from hf_llpf.algorithms.base import Context
from hf_llpf.algorithms.m2o import M2O
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.algorithms.spheres import choose_method
from hf_llpf.api import walk_to_origin
from hf_llpf.config import ConnectConfig, TrainRecipe, build
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.stages import build_stages
from hf_llpf.training.endpoint import train_endpoint

torch.set_num_threads(1)

FAST = {
    "step_r": 0.25,
    "min_iters": 2,
    "max_iters": 4,
    "save_every": 3,
    "arrival_tol": 0.05,
    "m2o": {"step_a": 0.1, "max_ticks": 40},
    "repair_budget": 8,
    "max_backtracks": 2,
}


@pytest.fixture(scope="module")
def spheres(tmp_path_factory, digits):
    """small_cnn endpoints on two variance spheres (weight decay 5e-4 vs 5e-2), and a second seed of the first."""
    root = tmp_path_factory.mktemp("spheres")
    for name, seed, wd in (("small", 1, 5e-2), ("large", 0, 5e-4), ("large2", 2, 5e-4)):
        train_endpoint(
            TrainRecipe(seed=seed, epochs=6, weight_decay=wd), out_dir=root / name, data=digits, progress=False
        )
    return root


_equal = state_equal


def _conv_var_ratio(a, b):
    return float(b.conv2.weight.detach().var() / a.conv2.weight.detach().var())


@pytest.mark.slow
@pytest.mark.parametrize("a_name,b_name", [("large", "small"), ("small", "large")])
def test_cross_sphere_path_has_exact_ends_and_phases(spheres, digits, tmp_path, a_name, b_name):
    a, b = load_endpoint(spheres / a_name), load_endpoint(spheres / b_name)
    assert _conv_var_ratio(load_endpoint(spheres / "large").model, load_endpoint(spheres / "small").model) < 0.5
    assert choose_method(a, b, ConnectConfig()) == "cross-sphere"
    config = {**FAST, "loss_ceiling": None}  # the phases' mechanics; certified: the slow test below
    path = hf_llpf.connect(a, b, digits, config=config, run_dir=tmp_path / "run", progress=False)
    assert _equal(path.state_dict_at(0), a.model.state_dict())
    assert _equal(path.state_dict_at(-1), b.model.state_dict())
    phases = [m["phase"] for m in path.metrics]
    assert phases[0] == "start" and phases[-1] == "end"
    expected = ["m2o", "m2m"] if a_name == "large" else ["m2m", "m2o_reversed"]
    seen = [p for i, p in enumerate(phases[1:-1]) if i == 0 or p != phases[i]]
    assert seen == expected
    assert path.ticks == sorted(path.ticks) and len(set(path.ticks)) == len(path.ticks)
    assert path.summary["run"]["method"] == "cross-sphere"
    sgd = [m["sgd_iters"] for m in path.metrics]
    assert sgd == sorted(sgd)  # counted along the path, also through the reversed part


def test_same_sphere_chooses_plain_m2m(spheres):
    a, b = load_endpoint(spheres / "large"), load_endpoint(spheres / "large2")
    assert choose_method(a, b, ConnectConfig()) == "m2m"
    assert choose_method(a, b, ConnectConfig(method="cross-sphere")) == "cross-sphere"
    with pytest.raises(ConfigError) as err:  # m2o is the walk to the origin: it connects nothing
        choose_method(a, b, ConnectConfig(method="m2o"))
    assert "M2O then M2M, which 'm2o' named before settings schema 2, is method='cross-sphere'" in str(err.value)


@pytest.mark.slow
def test_walk_reaches_the_target_variance_and_keeps_the_loss_low(spheres, digits, tmp_path):
    config = {
        "m2o": {"step_a": 0.05, "target_variance": 0.25, "max_ticks": 200},
        "save_every": 5,
        "min_iters": 3,
        "max_iters": 20,
    }
    start = load_endpoint(spheres / "large")
    path = walk_to_origin(start, digits, config=config, run_dir=tmp_path / "walk", progress=False)
    assert path.summary["run"]["reached"] is True
    end = path.model_at(-1)
    for name, p in start.model.named_parameters():
        if p.ndim > 1:
            ratio = float(end.get_parameter(name).detach().var() / p.detach().var())
            assert ratio <= 0.25 * 1.05, name  # at (or, after repair training, just around) the target
    assert _equal(path.state_dict_at(0), start.model.state_dict())
    # endpoints trained for 6 epochs only (train loss ~0.05): the walk stays within a few hundredths of it
    assert max(m["train_loss"] for m in path.metrics[1:]) < 0.15


def test_outward_walks_are_refused(spheres, digits, tmp_path):
    with pytest.raises(ConfigError, match="only walks a model inward.*reversed"):
        walk_to_origin(spheres / "small", digits, config={"m2o": {"target_variance": 2.0}}, run_dir=tmp_path / "x")


class _LNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.bn(self.ln(self.fc1(x))))


def _walk(model, lr_policy="var", compensate=True):
    config = build(ConnectConfig, {"m2o": {"step_a": 0.1, "lr_policy": lr_policy, "compensate_norms": compensate}})
    plan = build_stages(model, torch.randn(4, 4))
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    trainer = RepairTrainer(
        model,
        batches,
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        min_iters=1,
        max_iters=1,
        loss_threshold=0.0,
        per_tensor_lr=True,
    )
    return M2O(Context(model, trainer, plan, config, progress=False), None)


def test_shrink_moves_weights_inward_compensates_layernorm_and_leaves_batchnorm():
    torch.manual_seed(0)
    model = _LNNet()
    before = copy.deepcopy(model.state_dict())
    walk = _walk(model)
    factor = walk._shrink()
    walk._compensate(factor)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert torch.allclose(model.get_parameter(name), before[name] * 0.9, rtol=1e-6)  # step_a = 0.1 of ‖θ‖
    assert torch.allclose(model.ln.weight, before["ln.weight"] / 0.9, rtol=1e-6)  # LayerNorm keeps the scale
    assert torch.equal(model.bn.weight, before["bn.weight"]) and torch.equal(model.bn.bias, before["bn.bias"])
    # variance falls by exactly the squared factor
    assert torch.allclose(geometry.variances([model.fc1.weight]), geometry.variances([before["fc1.weight"]]) * 0.81)


@pytest.mark.parametrize("policy,power", [("var", 1.0), ("std", 0.5)])
def test_angle_conformal_learning_rates_per_tensor(policy, power):
    torch.manual_seed(0)
    model = _LNNet()
    start = {n: p.detach().var().item() for n, p in model.named_parameters()}
    walk = _walk(model, policy)
    for _ in range(3):
        walk._shrink()
    walk._set_learning_rates()
    lrs = {
        n: walk.trainer.optimizer.param_groups[walk.trainer.param_index(p)]["lr"] for n, p in model.named_parameters()
    }
    for name in ("fc1.weight", "fc2.weight"):
        w = model.get_parameter(name).detach().var().item()
        assert lrs[name] == pytest.approx(0.1 * (w / start[name]) ** power, rel=1e-9)
        assert lrs[name] < 0.1
    for name in ("fc1.bias", "fc2.bias", "ln.weight", "bn.weight"):
        assert lrs[name] == 0.1  # biases and norm parameters keep lr_0
    assert len(walk.trainer.optimizer.param_groups) == len(list(model.parameters()))


def _connect_killed_after(n_saves, a, b, digits, run, config, monkeypatch):
    return connect_killed_after(n_saves, monkeypatch, a, b, digits, config=config, run_dir=run, progress=False)


@pytest.mark.parametrize(
    "a_name,b_name,every_kill",
    # ("small", "large"): B walks, through the aside folder, killed at every kind of place; ("large", "small"): A
    # walks, killed after its first checkpoint, half way and after its last (fewer kills keep the slow suite short).
    [
        pytest.param("large", "small", False, marks=pytest.mark.slow),
        pytest.param("small", "large", True, marks=pytest.mark.slow),
    ],
)
def test_cross_sphere_run_killed_mid_way_resumes_bit_identically(
    spheres, digits, tmp_path, monkeypatch, a_name, b_name, every_kill
):
    a, b = load_endpoint(spheres / a_name), load_endpoint(spheres / b_name)
    # Plain LLPF keeps this 8-run test fast; the resume of a certified run is tested in test_certify.py.
    config = {**FAST, "checkpoint_every": 4, "loss_ceiling": None}
    whole = hf_llpf.connect(a, b, digits, config=config, run_dir=tmp_path / "whole", progress=False)
    total = _connect_killed_after(10**9, a, b, digits, tmp_path / "count", config, monkeypatch)
    # Kills in the M2O phase, at the phase change and in the M2M phase (and after the last checkpoint).
    kills = {1, total // 3, total // 2, total - 1, total} if every_kill else {1, total // 2, total}
    for k in sorted(kills):
        run = tmp_path / f"killed_{k}"
        _connect_killed_after(k, a, b, digits, run, config, monkeypatch)
        resumed = hf_llpf.connect(a, b, digits, config=config, run_dir=run, exist="resume", progress=False)
        assert resumed.ticks == whole.ticks, f"killed after checkpoint {k} of {total}"
        strip = lambda rows: [{c: v for c, v in r.items() if c != "point"} for r in rows]  # noqa: E731
        assert strip(resumed.metrics) == strip(whole.metrics), f"killed after checkpoint {k} of {total}"
        for i in range(len(whole)):
            assert _equal(resumed.state_dict_at(i), whole.state_dict_at(i)), (k, i)
        assert not (run / ".m2o_phase").exists()
        # Both phases' ticks and SGD iterations are counted once over the stretches, as the whole run counts them.
        (one,) = whole.summary["run"]["stretches"]
        for key in ("ticks", "sgd_iters"):
            assert sum(s[key] for s in resumed.summary["run"]["stretches"]) == one[key], (k, key)


def test_a_diverged_m2o_tick_is_rolled_back(spheres, digits, tmp_path):
    from hf_llpf.errors import DivergenceError
    from hf_llpf.run.resume import read_checkpoint

    walker = load_endpoint(spheres / "large")
    config = {**FAST, "loss_limit": 1e-9, "max_failures": 2}
    # M2O's step is a nested setting that --resume refuses to change: the advice says it takes a new run.
    with pytest.raises(DivergenceError, match=r"2 times.*then rerun with --resume.*In a new run.*lower m2o.step_a"):
        walk_to_origin(walker, digits, config=config, run_dir=tmp_path / "walk", progress=False)
    ckpt = read_checkpoint(tmp_path / "walk")["state"]
    assert ckpt["loop"]["tick"] == 0 and ckpt["loop"]["step_scale"] == 0.25
    assert _equal(ckpt["model"], walker.model.state_dict())  # the diverged state was not kept
    assert ckpt["trainer"]["optimizer"]["state"] == {}


@pytest.mark.slow
def test_a_certified_cross_sphere_path_holds_both_phases_under_the_ceiling(spheres, digits, tmp_path):
    a, b = load_endpoint(spheres / "large"), load_endpoint(spheres / "small")
    config = {**FAST, "repair_budget": 150, "max_backtracks": 6}  # the default budget (FAST's 8 cannot meet it)
    path = hf_llpf.connect(a, b, digits, config=config, run_dir=tmp_path / "run", progress=False)
    run = path.summary["run"]
    cert = run["certification"]
    assert run["method"] == "cross-sphere" and {"m2o", "m2m"} <= set(run["phases"])
    assert cert["certified"], cert["uncertified"]
    m2o_rows = [p for p in path.metrics if p["phase"] == "m2o"]
    assert m2o_rows and all(p["probe_loss"] <= cert["ceiling"] for p in m2o_rows)
    assert all(p["probe_loss"] <= cert["ceiling"] for p in path.metrics)
    assert _equal(path.state_dict_at(0), a.model.state_dict()) and _equal(path.state_dict_at(-1), b.model.state_dict())
