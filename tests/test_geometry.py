"""hf_llpf.geometry: exact variance projection, clamped steps, distances, AngleConformal (algorithm.md §2, §6)."""

import torch

torch.set_num_threads(1)

import math  # noqa: E402

import pytest  # noqa: E402

from hf_llpf import geometry as G  # noqa: E402
from hf_llpf.errors import ConfigError  # noqa: E402


def _tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(16, 3, 3, 3, generator=g) * 0.05,  # conv weight, variance ~2.5e-3
        torch.randn(16, generator=g) * 1e-3 + 1.0,  # BN weight: mean 1, tiny spread
        torch.randn(10, 64, generator=g) * 0.1 - 0.3,
        torch.randn(5000, generator=g) * 1e-2 + 100.0,  # large mean, small spread
        torch.randn(3, generator=g, dtype=torch.float64),
    ]


def test_variances_match_float64_reference():
    ts = _tensors() + [torch.tensor([2.5]), torch.zeros(())]
    v = G.variances(ts)
    assert v.dtype == torch.float64 and v.shape == (len(ts),)
    for t, got in zip(ts[:-2], v.tolist()):
        ref = t.double().var().item()
        assert got == pytest.approx(ref, rel=1e-6)
    assert v[-2].item() == 0.0 and v[-1].item() == 0.0  # one element: no variance, reported as 0


def test_projection_is_exact_and_keeps_mean():
    ts = _tensors()
    means = [t.double().mean().item() for t in ts]
    targets = torch.tensor([1e-4, 3.7e-7, 0.02, 2.0, 0.5], dtype=torch.float64)
    G.project_to_variance_(ts, targets)
    for t, target, m in zip(ts, targets.tolist(), means):
        got = t.double().var().item()  # measured independently of the function under test
        # Storing the result rounds each element by up to ulp/2; for a tensor whose spread is tiny next to its
        # mean (BN weights ~1 ± 6e-4) that alone shifts the variance by ~ulp(max|x|)/(std·sqrt(n)) relative.
        eps = torch.finfo(t.dtype).eps
        storage = 3 * eps * t.abs().max().item() / (math.sqrt(target) * math.sqrt(t.numel()))
        tol = (1e-12 if t.dtype == torch.float64 else 1e-6) + storage
        assert abs(got - target) <= tol * target, (got, target, tol)
        assert t.double().mean().item() == pytest.approx(m, rel=1e-6, abs=1e-6)


def test_projection_skips_one_element_zero_variance_and_parameters_work():
    single = torch.tensor([3.0])
    const = torch.full((4, 4), 0.5)
    p = torch.nn.Parameter(torch.randn(8, 8))  # requires grad: must still be corrected in place
    before_single, before_const = single.clone(), const.clone()
    G.project_to_variance_([single, const, p], torch.tensor([1.0, 1.0, 0.25]))
    assert torch.equal(single, before_single) and torch.equal(const, before_const)
    assert p.detach().double().var().item() == pytest.approx(0.25, rel=1e-6)


def test_projection_checks_length():
    with pytest.raises(ConfigError):
        G.project_to_variance_([torch.randn(4)], torch.tensor([1.0, 2.0]))


def test_step_sizes_clamp():
    d = torch.tensor([0.0, 0.0005, 0.01, 10.0], dtype=torch.float64)
    s = G.step_sizes(d, step_a=0.01, step_f=0.001)
    assert s.tolist() == [0.0, 0.0005, 0.001, 0.1]  # min(‖d‖, max(step_f, step_a·‖d‖))


def test_move_lands_exactly_never_overshoots_and_skips_equal():
    g = torch.Generator().manual_seed(1)
    target = [torch.randn(20, generator=g), torch.randn(3, 4, generator=g), torch.randn(50, generator=g)]
    current = [
        target[0] + 1e-5 * torch.randn(20, generator=g),  # closer than step_f: must land bit-exact
        target[1].clone(),  # already there: untouched
        target[2] + torch.randn(50, generator=g),  # far: moves by step_f along d
    ]
    equal_ptr = current[1].data_ptr()
    before = [c.clone() for c in current]
    dist0 = G.distances(current, target)
    remaining = G.move_toward_(current, target, step_a=0.0, step_f=0.01)
    assert torch.equal(current[0], target[0])  # copied bits, not θ + d arithmetic
    assert torch.equal(current[1], before[1]) and current[1].data_ptr() == equal_ptr
    measured = G.distances(current, target)
    assert remaining[0].item() == 0.0 and remaining[1].item() == 0.0
    assert remaining[2].item() == pytest.approx(dist0[2].item() - 0.01, rel=1e-9)
    assert measured[2].item() == pytest.approx(remaining[2].item(), rel=1e-5)
    moved = (current[2] - before[2]).double().norm().item()
    assert moved == pytest.approx(0.01, rel=1e-4)


def test_move_repeatedly_converges_without_oscillation():
    g = torch.Generator().manual_seed(2)
    target = [torch.randn(100, generator=g)]
    current = [target[0] + 0.05 * torch.randn(100, generator=g)]
    last = G.distances(current, target)[0].item()
    for _ in range(1000):
        rem = G.move_toward_(current, target, step_a=0.1, step_f=0.004)[0].item()
        assert rem <= last  # monotone: the clamp removes the reference's overshoot
        last = rem
        if rem == 0.0:
            break
    assert torch.equal(current[0], target[0])


def test_step_a_moves_a_fraction():
    a = [torch.zeros(10)]
    b = [torch.ones(10)]
    rem = G.move_toward_(a, b, step_a=0.25, step_f=0.0)
    assert torch.allclose(a[0], torch.full((10,), 0.25))
    assert rem[0].item() == pytest.approx(0.75 * math.sqrt(10), rel=1e-12)


def test_distances_cosine_origin():
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    b = [torch.tensor([0.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    assert G.distances(a, b).tolist() == [3.0, 0.0]
    assert G.total_distance(a, b) == pytest.approx(3.0)
    assert G.distance_to_origin(a).tolist() == [3.0, 4.0]
    assert G.cosine_similarity(a, b) == pytest.approx(4.0 / 5.0)
    assert G.cosine_similarity(a, a) == pytest.approx(1.0)
    assert math.isnan(G.cosine_similarity(a, [torch.zeros(2), torch.zeros(1, 2)]))
    with pytest.raises(ConfigError):
        G.distances(a, b[:1])
    # dtype=float64 takes the difference exactly (the evaluation's path length); the default keeps the
    # tensors' own dtype, where 256 - 1.0078125 rounds to 255 in bfloat16.
    x, y = [torch.tensor([1.0078125], dtype=torch.bfloat16)], [torch.tensor([256.0], dtype=torch.bfloat16)]
    assert G.total_distance(x, y, dtype=torch.float64) == 254.9921875
    assert G.total_distance(x, y) == 255.0


def test_angle_conformal_factor():
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    v = torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64)
    assert G.angle_conformal_factor(w, v, "var").tolist() == [0.25, 1.0, 1.0]
    assert G.angle_conformal_factor(w, v, "std").tolist() == [0.5, 1.0, 1.0]
    assert G.angle_conformal_factor(w, v).tolist() == [0.25, 1.0, 1.0]  # default policy: var
    with pytest.raises(ConfigError) as e:
        G.angle_conformal_factor(w, v, "adam")
    msg = str(e.value)
    assert "lr_policy" in msg and "'adam'" in msg and "var" in msg and "std" in msg


def test_interpolate_variance_endpoints_exact_and_geometric():
    a = torch.tensor([1e-4, 3.3e-3, 0.7, 0.0], dtype=torch.float64)
    b = torch.tensor([4e-4, 1.1e-2, 0.7, 0.2], dtype=torch.float64)
    assert torch.equal(G.interpolate_variance(a, b, torch.zeros(4)), a)
    assert torch.equal(G.interpolate_variance(a, b, torch.ones(4)), b)
    assert torch.equal(G.interpolate_variance(a, b, torch.tensor(-0.5)), a)  # clamped
    assert torch.equal(G.interpolate_variance(a, b, torch.tensor(7.0)), b)
    mid = G.interpolate_variance(a, b, torch.full((4,), 0.5))
    assert mid[0].item() == pytest.approx(2e-4, rel=1e-12)  # sqrt(1e-4 · 4e-4)
    assert mid[2].item() == pytest.approx(0.7, rel=1e-12)
    assert mid[3].item() == pytest.approx(0.1, rel=1e-12)  # zero variance: linear fallback


def test_empty_lists():
    assert G.variances([]).shape == (0,)
    assert G.distances([], []).shape == (0,)
    assert G.move_toward_([], [], step_a=0.1, step_f=0.0).shape == (0,)
    G.project_to_variance_([], torch.zeros(0))
