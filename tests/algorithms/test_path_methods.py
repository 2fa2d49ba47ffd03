"""One interface and one registry for every path method (hf_llpf.algorithms.registry)."""

import json

import pytest
import torch
from conftest import state_equal

from hf_llpf.algorithms.registry import (
    CurveMethod,
    EngineMethod,
    PathMethod,
    TrainedMethod,
    baseline_names,
    comparison_methods,
    engine_names,
    method_class,
    method_names,
    path_method,
    register,
    unregister,
)
from hf_llpf.errors import UnknownNameError
from hf_llpf.models import create_model

TODAY = ["autoneb", "bezier", "cross-sphere", "linear", "llpf", "m2m", "m2o", "slerp", "weight-matching"]


@pytest.fixture
def midpoint():
    """A toy method registered from this file alone: θ_A before the middle, the average of the ends at it, θ_B after
    (closed form, no training)."""

    @register("midpoint")
    class Midpoint(CurveMethod):
        def build(self, prepared):
            average = {k: (a + prepared.sb[k]) / 2 if a.is_floating_point() else a for k, a in prepared.sa.items()}
            return lambda t: prepared.sa if t < 0.5 else prepared.sb if t > 0.5 else average

    yield Midpoint
    unregister("midpoint")


def test_the_registry_lists_exactly_todays_methods_in_todays_order():
    assert method_names() == TODAY
    assert comparison_methods() == ("llpf", "linear", "slerp", "bezier", "autoneb", "weight-matching")
    assert baseline_names() == ("linear", "slerp", "bezier", "autoneb", "weight-matching")
    assert engine_names() == ["cross-sphere", "linear", "m2m", "m2o"]
    assert [n for n in TODAY if path_method(n).trains] == ["autoneb", "bezier", "cross-sphere", "llpf", "m2m", "m2o"]


def test_every_name_resolves_to_its_method():
    from hf_llpf.algorithms.cross_sphere import CrossSphere
    from hf_llpf.algorithms.linear import Linear
    from hf_llpf.algorithms.m2m import M2M
    from hf_llpf.algorithms.m2o import M2O
    from hf_llpf.baselines.autoneb import AutoNEBSettings
    from hf_llpf.baselines.bezier import BezierSettings

    for name in TODAY:
        entry = path_method(name)
        assert issubclass(entry, PathMethod) and entry.name == name
    engines = {"m2m": M2M, "m2o": M2O, "cross-sphere": CrossSphere, "linear": Linear}
    for name, engine in engines.items():
        assert method_class(name) is engine and engine.name == name  # the name its checkpoints record
    assert issubclass(path_method("llpf"), EngineMethod) and path_method("llpf").engine is None
    assert all(issubclass(path_method(n), CurveMethod) for n in baseline_names())
    assert [n for n in baseline_names() if issubclass(path_method(n), TrainedMethod)] == ["bezier", "autoneb"]
    assert path_method("bezier").settings is BezierSettings and path_method("autoneb").settings is AutoNEBSettings


def test_unknown_names_list_the_known_ones(tmp_path):
    from hf_llpf import compare
    from hf_llpf.baselines import build_baseline

    with pytest.raises(UnknownNameError) as err:
        path_method("nope")
    assert err.value.allowed == TODAY and str(err.value).startswith("unknown method 'nope'; available: autoneb, ")
    engines = "unknown method 'slerp'; available: auto, cross-sphere, linear, m2m, m2o"
    with pytest.raises(UnknownNameError, match=engines) as err:
        method_class("slerp")  # connect runs engine methods only
    hint = ". 'slerp' is a baseline: hf-llpf compare --methods slerp, or hf_llpf.build_baseline('slerp')"
    assert str(err.value).endswith(hint)
    curves = "linear, slerp, bezier, autoneb, weight-matching"
    with pytest.raises(UnknownNameError, match=f"unknown baseline method 'm2m'; available: {curves}"):
        build_baseline("m2m", "a", "b", run_dir=tmp_path / "x")
    with pytest.raises(UnknownNameError, match=f"unknown method 'nope'; available: llpf, {curves}"):
        compare("a", "b", out_dir=tmp_path / "c", methods=["linear", "nope"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "c").exists()


def test_a_method_registered_by_this_file_is_compared_like_the_others(midpoint, digits, tmp_path):
    from hf_llpf import Path, compare
    from hf_llpf.cli.compare import _methods

    assert comparison_methods()[-1] == "midpoint" and "midpoint" in baseline_names()
    assert _methods("linear,midpoint") == ["linear", "midpoint"]  # compare --methods and evaluate --baselines
    torch.manual_seed(0)
    a = create_model("lenet5").eval()
    torch.manual_seed(1)
    b = create_model("lenet5").eval()
    table = compare(a, b, digits, out_dir=tmp_path / "c", methods=["linear", "midpoint"], points=3, train_subset=64,
                    continuity_k=1)  # fmt: skip
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["linear", "midpoint"] and rows["midpoint"]["status"] == "ok"
    assert rows["midpoint"]["probe"] == rows["linear"]["probe"]  # judged on the same data
    path = Path(tmp_path / "c" / "midpoint")
    sa, sb = a.state_dict(), b.state_dict()
    assert len(path) == 3 and state_equal(path.state_dict_at(0), sa) and state_equal(path.state_dict_at(-1), sb)
    middle = path.state_dict_at(1)
    assert all(torch.equal(middle[k], (sa[k] + sb[k]) / 2) for k in sa if sa[k].is_floating_point())
    assert json.loads((tmp_path / "c" / "midpoint" / "endpoints.json").read_text())["method"] == "midpoint"
    assert "| midpoint |" in (tmp_path / "c" / "comparison.md").read_text()


def test_registering_an_engine_loop_makes_its_adapter():
    class Walk:
        @classmethod
        def for_run(cls, setup):
            return ("walk", setup)

    try:
        register("toy-walk")(Walk)
        entry = path_method("toy-walk")
        assert issubclass(entry, EngineMethod) and entry.engine is Walk and Walk.name == "toy-walk"
        assert method_class("toy-walk") is Walk and entry().build("setup") == ("walk", "setup")
        assert "toy-walk" not in comparison_methods()
    finally:
        unregister("toy-walk")
    assert method_names() == TODAY
