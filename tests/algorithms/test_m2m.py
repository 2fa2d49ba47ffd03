"""LLPF_M2M: exact endpoints, loadable points, low loss vs linear interpolation, resume, bad input."""

import copy
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import safetensors.torch
import torch
from conftest import linear_m2m, state_equal
from tiny_models import tiny_bert
from torch import nn

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.errors import DataMismatchError, EndpointMismatchError, RunDirectoryError
from hf_llpf.evaluation import score
from hf_llpf.models.endpoints import create_model, load_endpoint
from hf_llpf.run.resume import read_checkpoint

torch.set_num_threads(1)

FAST = {
    "step_r": 0.2,
    "min_iters": 2,
    "max_iters": 5,
    "save_every": 2,
    "checkpoint_every": 3,
    "arrival_tol": 0.05,
    "loss_ceiling": None,  # the walk's mechanics; certified M2M runs: test_certify.py
}


@pytest.fixture(scope="module")
def endpoints(small_cnn_pair):
    return small_cnn_pair


_state_equal = state_equal


def test_exact_endpoints_and_every_point_loads(endpoints, digits, tmp_path):
    path = hf_llpf.connect(*endpoints, digits, config=FAST, run_dir=tmp_path / "run", progress=False)
    a, b = load_endpoint(endpoints[0]).model, load_endpoint(endpoints[1]).model
    assert _state_equal(path.state_dict_at(0), a.state_dict())  # parameters and buffers, bit for bit
    assert _state_equal(path.state_dict_at(-1), b.state_dict())
    assert path.metrics[0]["phase"] == "start" and path.metrics[-1]["phase"] == "end"
    assert path.ticks == sorted(path.ticks) and len(path) >= 4
    for i in range(len(path)):
        model = path.model_at(i)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for name in ("llpf_config.yaml", "endpoints.json", "layer_groups.json", "path_metrics.json", "path_metrics.csv"):
        assert (tmp_path / "run" / name).is_file()
    assert path.metrics[-1]["dist_b"] == 0.0 and path.metrics[0]["dist_a"] == 0.0
    assert path.summary["run"]["sgd_iters"] == path.metrics[-1]["sgd_iters"] > 0


@pytest.mark.slow
def test_path_beats_linear_interpolation(endpoints, digits, tmp_path):
    config = {"step_r": 0.1, "min_iters": 2, "max_iters": 20, "save_every": 5}
    path = hf_llpf.connect(*endpoints, digits, config=config, run_dir=tmp_path / "run", progress=False)
    loader = digits.loader("train", batch_size=512, seed=0, shuffle=False, augment=False)
    llpf = max(score(path.model_at(i), loader)["loss"] for i in range(len(path)))  # model_at: eval mode
    a, b = load_endpoint(endpoints[0]).model, load_endpoint(endpoints[1]).model
    linear = []
    for t in torch.linspace(0, 1, 11).tolist():
        mid = copy.deepcopy(a)
        sa, sb = a.state_dict(), b.state_dict()
        mid.load_state_dict({k: torch.lerp(sa[k].float(), sb[k].float(), t).to(sa[k].dtype) for k in sa})
        linear.append(score(mid.eval(), loader)["loss"])
    assert max(linear) > 1.0
    assert llpf < 0.3 < max(linear) / 4


def test_plain_module_and_dataloader(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(5):
            for xb, yb in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(m(xb), yb).backward()
                opt.step()
        models.append(m)
    path = hf_llpf.connect(models[0], models[1], loader, config=FAST, run_dir=tmp_path / "run", progress=False)
    assert _state_equal(path.model_at(-1).state_dict(), models[1].state_dict())
    assert _state_equal(path.model_at(0).state_dict(), models[0].state_dict())
    assert path.model_at(-1) is not models[1]


def test_transformers_endpoints_with_dict_batches(tmp_path):
    size = {"vocab_size": 30, "num_labels": 2, "max_position_embeddings": 16}
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (64, 8))
    batches = [{"input_ids": ids[i : i + 16], "labels": (ids[i : i + 16, 0] % 2)} for i in range(0, 64, 16)]
    a, b = tiny_bert(0, **size), tiny_bert(1, **size)
    path = hf_llpf.connect(
        a,
        b,
        batches,
        config={**FAST, "loss_limit": 100, "max_ticks": 40, "method": "m2m"},
        run_dir=tmp_path / "run",
        progress=False,
    )
    assert _state_equal(path.model_at(-1).state_dict(), b.state_dict())
    assert type(path.model_at(0)).__name__ == "BertForSequenceClassification"


RUNNER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    import hf_llpf
    from hf_llpf.algorithms.repair import RepairTrainer
    slow = sys.argv[4] == "slow"
    if slow:  # make every repair step slow so the parent can kill the run mid-way
        original = RepairTrainer.repair
        def repair(self, *args, **kwargs):
            time.sleep(0.05)
            return original(self, *args, **kwargs)
        RepairTrainer.repair = repair
    cfg = dict(step_r=0.1, min_iters=2, max_iters=5, save_every=2, checkpoint_every=3, arrival_tol=0.05,
               loss_ceiling=None)
    hf_llpf.connect(sys.argv[1], sys.argv[2], "digits", config=cfg, run_dir=sys.argv[3], progress=False,
                    exist="resume" if sys.argv[5] == "resume" else "error")
    """
)


def _run(endpoints, run_dir, mode, exist):
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(endpoints[0]), str(endpoints[1]), str(run_dir), mode, exist]
    )


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(endpoints, tmp_path):
    whole = tmp_path / "whole"
    assert _run(endpoints, whole, "fast", "new").wait(timeout=300) == 0
    broken = tmp_path / "broken"
    proc = _run(endpoints, broken, "slow", "new")
    deadline = time.time() + 120
    while time.time() < deadline and not (broken / "points" / "t_000008").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (broken / "checkpoint" / "state.json").is_file()
    assert _run(endpoints, broken, "fast", "resume").wait(timeout=300) == 0
    first, second = hf_llpf.RunPath(whole), hf_llpf.RunPath(broken)
    assert first.ticks == second.ticks
    for i in range(len(first)):
        assert _state_equal(first.state_dict_at(i), second.state_dict_at(i)), f"point {i} differs"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "point"} for r in rows]  # noqa: E731
    assert strip(first.metrics) == strip(second.metrics)


def test_bad_inputs(endpoints, digits, tmp_path):
    a = load_endpoint(endpoints[0])
    with pytest.raises(EndpointMismatchError, match="conv1.weight"):
        hf_llpf.connect(a, create_model("small_cnn", width=8), digits, run_dir=tmp_path / "x", progress=False)
    with pytest.raises(DataMismatchError, match="num_classes=5"):
        five = create_model("small_cnn", num_classes=5)
        hf_llpf.connect(five, copy.deepcopy(five), digits, run_dir=tmp_path / "y", progress=False)
    hf_llpf.connect(a, endpoints[1], digits, config=FAST, run_dir=tmp_path / "z", progress=False)
    with pytest.raises(RunDirectoryError, match="--resume.*--overwrite"):
        hf_llpf.connect(a, endpoints[1], digits, config=FAST, run_dir=tmp_path / "z", progress=False)


@pytest.mark.slow
def test_cli_connect_and_override_errors(endpoints, tmp_path, capsys):
    args = [
        "connect",
        str(endpoints[0]),
        str(endpoints[1]),
        "--data",
        "digits",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main([*args, "step_r=0.3", "max_iters=3", "min_iters=1", "repair_budget=8", "loss_ceiling=null"]) == 0
    assert "points" in capsys.readouterr().out
    assert main([*args, "--overwrite", "stepr=0.3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'm2m.step_r'" in err and "valid keys: method, schema_version, seed, m2m" in err
    last = safetensors.torch.load_file(str(sorted((tmp_path / "r" / "points").iterdir())[-1] / "model.safetensors"))
    assert _state_equal(last, load_endpoint(endpoints[1]).model.state_dict())


def test_divergence_guard_rolls_back_then_stops_with_a_checkpoint(endpoints, digits, tmp_path):
    from hf_llpf.errors import DivergenceError

    # Every tick's loss is above this limit: each tick is rolled back with half the step, until the run stops.
    config = {**FAST, "loss_limit": 1e-9, "max_failures": 3}
    with pytest.raises(DivergenceError, match="3 times.*--resume"):
        hf_llpf.connect(*endpoints, digits, config=config, run_dir=tmp_path / "run", progress=False)
    ckpt = read_checkpoint(tmp_path / "run")["state"]
    assert ckpt["loop"]["failures"] == 3 and ckpt["loop"]["step_scale"] == 0.125
    assert ckpt["loop"]["tick"] == 0  # no broken point was recorded
    a = load_endpoint(endpoints[0]).model.state_dict()
    assert all(torch.equal(ckpt["model"][k], a[k]) for k in a)  # rolled back to θ_A, buffers included


def test_sync_check_names_the_tick_when_processes_disagree():
    from types import SimpleNamespace

    from hf_llpf.algorithms.guard import check_in_sync
    from hf_llpf.errors import DivergenceError

    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    local = torch.tensor([[6.0, 14.0]], dtype=torch.float64)  # sum and sum of squares over every tensor
    same = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: torch.cat([t, t]))
    check_in_sync(same, params, where="at tick 3")  # the process's own checksum, twice: in step
    other = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: torch.cat([t, local + 1]))
    with pytest.raises(
        DivergenceError, match=r"different weights at tick 3 \(checksums \[\[6.0, 14.0\], \[7.0, 15.0\]\]"
    ):
        check_in_sync(other, params, where="at tick 3")


@pytest.mark.slow
def test_cli_repeats_write_every_path_and_the_consistency_report(endpoints, tmp_path, capsys):
    import json

    args = [
        "connect",
        str(endpoints[0]),
        str(endpoints[1]),
        "--data",
        "digits",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--repeats",
        "2",
        "step_r=0.5",
        "max_iters=3",
        "min_iters=1",
        "loss_ceiling=null",  # the repeats' mechanics, as FAST above; certified runs: test_certify.py
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "r" / "consistency.json").read_text())
    assert report["repeats"] == 2 and (tmp_path / "r" / "plots" / "repeats.png").stat().st_size > 0
    first, second = hf_llpf.RunPath(tmp_path / "r" / "repeat_00"), hf_llpf.RunPath(tmp_path / "r" / "repeat_01")
    assert not torch.equal(first.state_dict_at(1)["conv1.weight"], second.state_dict_at(1)["conv1.weight"])


class _WithPair(nn.Module):
    """A linear classifier plus a 2-element parameter that the loss below pulls far from both endpoints."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 2)
        self.pair = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.body(x) + self.pair


def _pair_endpoints(pair_a: list[float], pair_b: list[float]) -> list[_WithPair]:
    """θ_A and θ_B: `body` from seeds 0 and 1 (untrained), `pair` as given."""
    models = []
    for seed, pair in ((0, pair_a), (1, pair_b)):
        torch.manual_seed(seed)
        m = _WithPair()
        with torch.no_grad():
            m.pair.copy_(torch.tensor(pair))
        models.append(m)
    return models


def _sign_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(n, 6)
    return [(x[i : i + 32], (x[i : i + 32, 0] > 0).long()) for i in range(0, n, 32)]


def _pull_pair(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y) + 0.02 * (model.pair - 1.0).square().sum()


def test_a_tiny_tensor_that_training_drags_away_does_not_stall_its_stage(tmp_path):
    # Both endpoints hold `pair` near 0 (d0 = 0.01); every repair step drags it toward 1, by more than its own
    # step of step_r·d0 per tick, so it never comes within arrival_tol of θ_B. Measured over the stage (with
    # `body`, ~100x farther), the stage arrives anyway; measured per tensor it stalled until max_ticks.
    batches = _sign_batches(128)
    models = _pair_endpoints([0.0, 0.0], [0.01, 0.01])
    config = {"step_r": 0.25, "min_iters": 2, "max_iters": 2, "max_ticks": 40, "arrival_tol": 0.1}
    config |= {"method": "m2m", "loss_ceiling": None, "lr": 0.01}  # the plain tick rule, as measured
    config["stages"] = {"stages": [[".*"]]}  # one stage: `pair` and `body` together
    path = hf_llpf.connect(
        *models, batches, config=config, run_dir=tmp_path / "run", loss_fn=_pull_pair, progress=False
    )
    before_snap = path.state_dict_at(-2)["pair"]
    # per tensor, `pair` had not arrived: farther from θ_B than arrival_tol × its initial distance (0.1 × 0.01)
    assert float((before_snap - models[1].pair.detach()).norm()) > 0.1 * 0.01
    assert path.summary["run"]["ticks"] <= 6  # measured: 5 ticks + the final snap (per tensor: max_ticks, 40)
    assert _state_equal(path.model_at(-1).state_dict(), models[1].state_dict())


def test_bn_momentum_applies_to_the_working_copy_only(endpoints, digits, tmp_path):
    from hf_llpf.algorithms import m2m as m2m_module

    seen = []
    original = m2m_module.M2M.run

    def spy(self):
        seen.extend(m.momentum for m in self.model.modules() if isinstance(m, nn.BatchNorm2d))
        return original(self)

    a = load_endpoint(endpoints[0]).model
    config = {**FAST, "bn_momentum": 0.7, "max_ticks": 1}
    try:
        m2m_module.M2M.run = spy
        hf_llpf.connect(a, endpoints[1], digits, config=config, run_dir=tmp_path / "run", progress=False)
    finally:
        m2m_module.M2M.run = original
    assert seen and set(seen) == {0.7}  # the repair training's BatchNorm layers
    assert {m.momentum for m in a.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}  # the caller's model: untouched


def test_a_two_element_tensor_crosses_between_its_sphere_points(tmp_path):
    # At fixed mean, a 2-element tensor's variance sphere is two points (x1 - x2 = ±c). θ_A and θ_B differ in the sign
    # of x1 - x2 (the values of a tiny DLA's BatchNorm weight): projecting it after each move sent it back to θ_A's
    # side for ever; it is not variance-corrected, so it moves straight to θ_B.
    batches = _sign_batches(64)
    models = _pair_endpoints([0.3489, 1.5218], [1.2226, 0.8365])
    config = {"step_r": 0.25, "min_iters": 1, "max_iters": 1, "lr": 1e-6, "max_ticks": 30, "arrival_tol": 0.02}
    config |= {"method": "m2m", "loss_ceiling": None}  # the plain tick rule this test is about
    config["stages"] = {"stages": [["^body"], ["^pair"]]}
    path = hf_llpf.connect(*models, batches, config=config, run_dir=tmp_path / "run", progress=False)
    assert len(path.summary["run"]["stage_starts"]) == 2
    assert path.summary["run"]["ticks"] <= 10  # 4 moves per stage (+1 to see the arrival) and the snap; not 30
    assert torch.allclose(path.state_dict_at(-2)["pair"], models[1].pair.detach(), atol=1e-4)  # arrived by moving


def test_a_move_at_the_largest_step_lands_even_past_the_initial_distance():
    # Repair during earlier stages can push a later stage's tensors farther from θ_B than they started; the
    # largest step (one initial distance) would then stop short, and the stage would need a second tick.
    method, model, b = linear_m2m({"step_r": 0.25})
    with torch.no_grad():  # three initial distances away from θ_B
        for p, pb in zip(model.parameters(), b.parameters(), strict=True):
            p.add_(2 * (p - pb))
    active = list(range(len(method.params)))
    method.state.step_scale = 1.0
    short = method._move(active, method.last_dist)
    assert bool((short > 0).all())  # a quarter of the initial distance: far from there
    method.state.step_scale = method.max_step_scale  # 4 = 1 / step_r
    assert bool((method._move(active, method.last_dist) == 0).all())
    for p, pb in zip(model.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, pb)


def test_the_walk_holds_theta_a_and_theta_b_once(endpoints, digits, tmp_path, monkeypatch):
    # θ_A's tensors (the distance-to-A column) and θ_B's (the moves' targets and the final snap) are the loaded
    # endpoints' own, read only: no second copy of either. The endpoints are unchanged by the walk.
    from hf_llpf.algorithms.m2m import M2M

    seen = []
    original = M2M.for_run.__func__

    def spy(cls, run):
        method = original(cls, run)
        seen.append((run, method))
        return method

    monkeypatch.setattr(M2M, "for_run", classmethod(spy))
    config = {**FAST, "max_ticks": 3}
    hf_llpf.connect(endpoints[0], endpoints[1], digits, config=config, run_dir=tmp_path / "run", progress=False)
    ((run, method),) = seen
    ptrs = lambda tensors: [t.data_ptr() for t in tensors]  # noqa: E731
    a_params = [run.ea.model.get_parameter(n) for n in method.names]
    assert ptrs(method.start) == ptrs(a_params)
    b_state = run.eb.model.state_dict()
    assert ptrs(method.final_state.values()) == ptrs(b_state.values())
    assert ptrs(method.target) == ptrs(b_state[n] for n in method.names)
    assert not set(ptrs(method.start)) & set(ptrs(method.params))  # the working model is a copy: it moves
    for folder, model in ((endpoints[0], run.ea.model), (endpoints[1], run.eb.model)):
        stored = safetensors.torch.load_file(str(folder / "model.safetensors"))
        state = model.state_dict()
        assert stored.keys() <= state.keys()
        assert _state_equal({k: state[k] for k in stored}, stored)
