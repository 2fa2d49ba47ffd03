"""Certified paths: every point and segment under the loss ceiling, on training examples the test measures itself."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import state_equal

import hf_llpf
from hf_llpf.algorithms.base import Method
from hf_llpf.algorithms.certify import AUTO_FLOOR, WATCH_FACTOR, Certifier, Verdict
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.probe import ProbeSet
from hf_llpf.evaluation.scoring import score
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import read_metrics

torch.set_num_threads(1)

# A quick certified run: short stages, the default (auto) ceiling.
QUICK = {"step_r": 0.5, "arrival_tol": 0.05, "checkpoint_every": 4}


def probe_examples(digits, size=None, seed=0):
    """The examples a run certifies on, rebuilt here independently of hf_llpf: every training image (``size``: the
    seeded subset of that many), normalised as the data says."""
    images, labels = digits.train_tensors.images, digits.train_tensors.labels
    size = len(labels) if size is None else size
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    x = images[idx].float() / 255.0
    x = (x - 0.5) / 0.5
    return x, labels[idx]


@torch.no_grad()
def own_probe_loss(model, x, y):
    model.eval()
    return float(F.cross_entropy(model(x), y))


@pytest.fixture
def certified_run(quick_certified_run):
    return quick_certified_run  # connected with QUICK from the CLI; read-only


@pytest.mark.slow  # a whole certified run or evaluation: kept out of the fast suite
def test_every_saved_point_is_under_the_ceiling_by_an_independent_measure(certified_run, small_cnn_pair, digits):
    path, run_dir = certified_run
    cert = read_metrics(run_dir)["summary"]["run"]["certification"]
    ceiling = cert["ceiling"]
    x, y = probe_examples(digits)
    a, b = (load_endpoint(p).model for p in small_cnn_pair)
    ends = [own_probe_loss(m, x, y) for m in (a, b)]
    assert cert["probe_examples"] == 1437 and cert["route"] == "exact"
    assert cert["endpoint_probe_losses"] == pytest.approx(ends, rel=1e-5)
    assert ceiling == pytest.approx(max(ends) + max(AUTO_FLOOR, 0.5 * max(ends)), rel=1e-6)
    assert cert["certified"] and cert["uncertified"] == []
    assert len(path) >= 4
    for i, row in enumerate(path.metrics):
        mine = own_probe_loss(path.model_at(i), x, y)
        assert row["probe_loss"] == pytest.approx(mine, rel=1e-4, abs=1e-6), f"point {i}"
        assert mine <= ceiling, f"point {i}: {mine} > {ceiling}"
        if i > 0:  # the segment from the previous tick's point (every tick is saved here)
            assert row["segment_loss"] <= ceiling
    # The segments' midpoints, measured here between consecutive saved points.
    for i in range(1, len(path)):
        sa, sb = path.state_dict_at(i - 1), path.state_dict_at(i)
        mid = copy.deepcopy(a)
        mid.load_state_dict({k: (sa[k] + sb[k]) / 2 if sa[k].is_floating_point() else sb[k] for k in sa})
        assert own_probe_loss(mid, x, y) <= ceiling * (1 + 1e-5), f"segment {i - 1}-{i}"
    assert state_equal(path.state_dict_at(0), a.state_dict())
    assert state_equal(path.state_dict_at(-1), b.state_dict())


def test_the_run_says_certified_and_the_path_beats_the_straight_line(certified_run):
    from hf_llpf.algorithms.certify import certification_line

    _, run_dir = certified_run
    cert = read_metrics(run_dir)["summary"]["run"]["certification"]
    line = certification_line(cert)
    assert line == (
        f"certified: every saved point and every segment at t = 0.5 has mean eval-mode training loss <= "
        f"{cert['ceiling']:.4g} over all 1437 training examples (exact; final check: maximum "
        f"{cert['final_check']['max']:.4g})"
    )


@pytest.mark.slow
def test_a_segment_above_the_ceiling_gets_a_point_inserted(small_cnn_pair, digits, tmp_path, monkeypatch):
    plain = hf_llpf.connect(*small_cnn_pair, digits, config=QUICK, run_dir=tmp_path / "plain", progress=False)
    real, calls = Certifier.midpoint_loss, {"n": 0}

    def first_segment_fails(self, model, previous, **kwargs):
        if kwargs.get("first") is not None:  # the far-segment check after a repair round: not the certificate
            return real(self, model, previous, **kwargs)
        calls["n"] += 1
        return 10.0 if calls["n"] == 1 else real(self, model, previous, **kwargs)

    monkeypatch.setattr(Certifier, "midpoint_loss", first_segment_fails)
    run = hf_llpf.connect(*small_cnn_pair, digits, config=QUICK, run_dir=tmp_path / "split", progress=False)
    summary = run.summary["run"]
    assert summary["backtracks"] >= 1 and summary["certification"]["certified"]
    # The first move was retried at half the step: the first point now lies about halfway to where it was.
    first_plain, first_split = plain.metrics[1]["dist_a"], run.metrics[1]["dist_a"]
    assert 0.3 * first_plain < first_split < 0.75 * first_plain
    assert run.metrics[1]["segment_loss"] < 10.0 and calls["n"] >= 2  # the failed segment was probed again, not kept
    assert all(r["segment_loss"] <= summary["certification"]["ceiling"] for r in run.metrics[1:])


def test_a_ceiling_below_an_endpoint_is_refused_with_both_numbers(small_cnn_pair, digits, tmp_path):
    with pytest.raises(ConfigError, match=r"loss_ceiling=1e-06 is below endpoint [AB]'s own probe loss 0\.0\d+"):
        hf_llpf.connect(*small_cnn_pair, digits, config={"loss_ceiling": 1e-6}, run_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # refused before the run directory is created


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_an_unreachable_ceiling_is_reported_not_hidden(small_cnn_pair, digits, tmp_path):
    from hf_llpf.algorithms.certify import certification_line

    # Just above the endpoints, 4 repair iterations a tick and no backtracking: interior points stay above it.
    ends = [own_probe_loss(load_endpoint(p).model, *probe_examples(digits)) for p in small_cnn_pair]
    config = {**QUICK, "loss_ceiling": max(ends) * 1.01, "repair_budget": 4, "max_backtracks": 0}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    cert = path.summary["run"]["certification"]
    assert not cert["certified"] and cert["uncertified"]
    first = cert["uncertified"][0]
    assert first["loss"] > cert["ceiling"] and first["what"] in ("point", "segment")
    assert certification_line(cert).startswith(f"NOT certified: {len(cert['uncertified'])} above the ceiling")
    assert state_equal(path.state_dict_at(-1), load_endpoint(small_cnn_pair[1]).model.state_dict())


@pytest.mark.slow  # a whole certified run or evaluation: kept out of the fast suite
def test_a_straight_line_under_the_ceiling_is_the_path(small_cnn_pair, digits, tmp_path):
    a = load_endpoint(small_cnn_pair[0]).model
    b = copy.deepcopy(a)
    with torch.no_grad():  # a "fine-tune" of A: close enough that the straight line stays low
        for p in b.parameters():
            p.add_(0.01 * torch.randn_like(p) * p.std().clamp_min(1e-3))
    path = hf_llpf.connect(a, b, digits, run_dir=tmp_path / "line", progress=False)
    run = path.summary["run"]
    assert run["method"] == "linear" and run["sgd_iters"] == 0 and len(path) == 9
    assert run["certification"]["certified"]
    assert state_equal(path.state_dict_at(0), a.state_dict()) and state_equal(path.state_dict_at(-1), b.state_dict())
    x, y = probe_examples(digits)
    assert max(own_probe_loss(path.model_at(i), x, y) for i in range(9)) <= run["certification"]["ceiling"]
    # Forcing the walk still walks.
    walked = hf_llpf.connect(a, b, digits, config={**QUICK, "method": "m2m"}, run_dir=tmp_path / "walk",
                             progress=False)  # fmt: skip
    assert walked.summary["run"]["method"] == "m2m"


@pytest.mark.slow
def test_no_ceiling_is_plain_llpf(small_cnn_pair, digits, tmp_path):
    config = {**QUICK, "loss_ceiling": None}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    cert = path.summary["run"]["certification"]
    assert cert["ceiling"] is None and not cert["certified"]
    assert all(r["probe_loss"] is None for r in path.metrics)


@pytest.mark.slow
def test_a_certified_run_killed_mid_way_resumes_bit_identically(certified_run, small_cnn_pair, digits, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    from conftest import connect_killed_after

    whole, _ = certified_run
    total = len(whole.ticks) // QUICK["checkpoint_every"] + 2  # about: one checkpoint per 4 ticks, start, end
    for k in (1, max(2, total // 2)):
        run = tmp_path / f"killed_{k}"
        connect_killed_after(k, monkeypatch, *small_cnn_pair, digits, config=QUICK, run_dir=run, progress=False)
        resumed = hf_llpf.connect(*small_cnn_pair, digits, config=QUICK, run_dir=run, exist="resume", progress=False)
        assert resumed.ticks == whole.ticks, f"killed after checkpoint {k}"
        strip = lambda rows: [{c: v for c, v in r.items() if c != "point"} for r in rows]  # noqa: E731
        assert strip(resumed.metrics) == strip(whole.metrics), f"killed after checkpoint {k}"
        for i in range(len(whole)):
            assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), (k, i)
        assert_same_certificate(resumed.summary["run"]["certification"], whole.summary["run"]["certification"])


def assert_same_certificate(resumed: dict, whole: dict) -> None:
    """The same certificate, but for the work counts: the ticks repeated after the checkpoint are probed twice, and
    the final check measures again what the killed session had measured (the same values)."""
    counts = ("probes", "probes_stopped_early", "decisions", "examples_per_decision", "examples_run")
    redone = {k: resumed[k] for k in (*counts, "final_check") if k in resumed}
    assert resumed == whole | redone
    if "final_check" in whole:
        work = ("seconds", "reused", "examples_run")
        strip = lambda d: {k: v for k, v in d.items() if k not in work}  # noqa: E731
        assert strip(resumed["final_check"]) == strip(whole["final_check"])


def _probe_of(model_seed=0, batches=8, size=64):
    """A probe of random images on a small linear classifier (loss about ln 10 per example)."""
    g = torch.Generator().manual_seed(model_seed)
    data = [
        (torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(batches)
    ]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return ProbeSet(data), model, data


def test_probe_loss_equals_the_scorer_and_stops_early_only_above():
    probe, model, data = _probe_of()
    full = probe.loss(model)
    # The probe's examples, in order, re-cut into batches of 32, 32, 64, 128, ... (early stops, fast full passes).
    assert [len(y) for _, y in probe.batches] == [32, 32, 64, 128, 128, 128]
    assert torch.equal(torch.cat([x for x, _ in probe.batches]), torch.cat([x for x, _ in data]))
    assert full == score(model, probe.batches)["loss"]  # the same sum in the same order: equal, not close
    assert full == pytest.approx(score(model, data)["loss"], rel=1e-6)  # other batches: rounding only
    assert probe.examples_run == 512 and probe.stopped == 0
    # Asked whether it is above a value it exceeds: decided early, with a lower bound that is itself above.
    bound = probe.loss(model, above=full / 4)
    assert full / 4 < bound < full and probe.stopped == 1 and probe.examples_run < 2 * 512
    # Asked about a value it does not exceed: the full pass, the exact value.
    assert probe.loss(model, above=full * 1.01) == full and probe.stopped == 1
    # The estimate stops clearly-above probes after two batches; a custom loss (maybe negative) never stops.
    run = probe.examples_run
    assert probe.loss(model, above=full * 0.8, estimate=True) > full * 0.8 and probe.examples_run - run == 64
    custom = ProbeSet(data, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    assert custom.loss(model, above=full / 4) == pytest.approx(full, rel=1e-6) and custom.stopped == 0
    # ``first``: a decision on the first examples only, their mean (never for a custom loss).
    head = score(model, probe.batches[:2])["loss"]
    assert probe.loss(model, above=full * 10, first=64) == pytest.approx(head, rel=1e-6) and probe.stopped == 3
    assert custom.loss(model, above=full * 10, first=64) == pytest.approx(full, rel=1e-6) and custom.stopped == 0


class _NoRepair:
    """A repair trainer whose rounds change nothing: the point stays where the move put it."""

    def __init__(self):
        self.iters = 0

    def repair(self, iters):
        self.iters += iters
        return 1.0, None


def test_a_segment_far_above_after_the_first_round_ends_the_attempt():
    probe, model, _ = _probe_of()
    point = probe.loss(model)
    ceiling = point / 2  # the point needs repair, and no repair helps it
    config = ConnectConfig(loss_ceiling=ceiling, repair_budget=40)
    cert = Certifier(probe, ceiling, config, [ceiling])
    here = [t.clone() for t in model.state_dict().values()]
    far = [t * 50 for t in here]  # a midpoint 25x the weights: its loss is far above three ceilings
    assert cert.midpoint_loss(model, far) > WATCH_FACTOR * ceiling

    trainer = _NoRepair()
    verdict = cert.certify(model, trainer, far, lambda: None, watch=True)
    assert verdict.abandoned and not verdict.ok and verdict.extra_iters == trainer.iters == config.min_iters
    assert verdict.segment > WATCH_FACTOR * ceiling
    # Not watched (the attempt would be kept), or a segment near the point: the whole budget is spent.
    for previous, watch in ((far, False), (here, True)):
        trainer = _NoRepair()
        verdict = cert.certify(model, trainer, previous, lambda: None, watch=watch)
        assert not verdict.abandoned and verdict.extra_iters == trainer.iters == 40 and not verdict.ok
        assert verdict.point == point  # reported values are full passes
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), here, strict=True))


def test_probe_batches_are_re_cut_only_when_they_join():
    from hf_llpf.evaluation.probe import graduated

    g = torch.Generator().manual_seed(0)
    same = [{"input_ids": torch.randint(0, 9, (50, 8), generator=g), "labels": torch.arange(50)} for _ in range(3)]
    cut = graduated(same)
    assert [len(b["labels"]) for b in cut] == [32, 32, 64, 22]
    assert torch.equal(torch.cat([b["input_ids"] for b in cut]), torch.cat([b["input_ids"] for b in same]))
    padded = [{"input_ids": torch.zeros(4, n, dtype=torch.long), "labels": torch.zeros(4)} for n in (5, 7)]
    assert graduated(padded) is padded  # text padded to different lengths: kept as it is


def test_the_repair_rate_comes_down_after_a_spent_budget_or_a_far_segment_twice():
    lowered = []
    method = SimpleNamespace(
        config=ConnectConfig(repair_budget=40), _lower_repair_rate=lambda name, why: lowered.append(why)
    )

    def judge(verdict, far_before):
        lowered.clear()
        Method._judge_repair_rate(method, verdict, far_before=far_before, name="m2m")
        return lowered

    spent = Verdict(point=0.5, segment=None, extra_iters=40, ceiling=0.1)
    assert judge(spent, far_before=False) == ["the point stayed above the ceiling after repair_budget=40 iterations"]
    far = Verdict(point=0.5, segment=1.0, extra_iters=4, ceiling=0.1, min_iters=4, abandoned=True)
    assert judge(far, far_before=False) == []  # the first far segment: a shorter move may mend it
    assert judge(far, far_before=True) and "half the step" in lowered[0]
    assert judge(Verdict(point=0.05, segment=0.2, extra_iters=10, ceiling=0.1), far_before=True) == []
