"""``evaluate`` with the model sharded by FSDP2 (``sharding="fsdp"``; docs/distributed.md, "Models larger than one
device") against the unsharded evaluation of the same runs; and what it refuses.

The slow test starts ONE torchrun launch (this file as its script, through conftest's ``run_python``) of two gloo
processes that evaluates both runs sharded, every safetensors read recorded; the unsharded figures are computed here,
in one process.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import fsdp_pairs, run_python
from read_spy import ReadSpy
from safetensors.torch import load_file

import hf_llpf
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation import evaluate_path

torch.set_num_threads(1)

# A run of a few points (every tensor moving from the first tick) on each pair, built once, unsharded.
SETTINGS = {"method": "m2m", "fdf": False, "step_r": 0.34, "max_ticks": 4, "min_iters": 1, "max_iters": 2,
            "repair_budget": 4, "seed": 0, "loss_ceiling": None}  # fmt: skip
# Small data, batch counts that do not divide by two (a process makes an uncounted pass), BatchNorm recalibration on
# the CNN.
OPTIONS = {
    "gpt2": {"batch_size": 8, "train_subset": 40, "continuity_subset": 24, "linear_points": 3, "continuity_k": 1},
    "cnn": {"batch_size": 16, "train_subset": 80, "continuity_subset": 24, "linear_points": 3, "continuity_k": 1,
            "recalibrate_bn": True, "recal_batches": 3},
}  # fmt: skip
# The sharded figures against the unsharded ones: relative to the figure, or to the run's largest loss for a
# difference of losses (a continuity row's excess, a barrier), where the roundings of the losses do not shrink with
# the difference. Both add the same float64 sums of float32 batch losses, in another order (each process's share,
# then over the processes), and the unsharded CNN runs on its channels-last view with BatchNorm folded
# (hf_llpf.evaluation.layout), which the sharded model does not: roundings of float32 (~1e-7 of a loss).
REL_TOL = 1e-6


def _connect(root: Path, name: str) -> Path:
    data = str(root / "corpus.txt") if name == "gpt2" else "digits"
    run = root / f"{name}_run"
    hf_llpf.connect(str(root / f"{name}_0"), str(root / f"{name}_1"), data, config=SETTINGS, run_dir=run,
                    progress=False)  # fmt: skip
    return run


def _worker(root: Path) -> None:
    """Inside torchrun: each run evaluated sharded, every safetensors read recorded, whole-file readers refused; the
    CNN run once more with a template (a path of plain modules), its structure copied from the template."""
    from unittest import mock

    import safetensors
    import transformers

    from hf_llpf.models.endpoints import load_endpoint

    template = load_endpoint(root / "cnn_0").model  # read before the spy: a template is a whole module

    def refused(*args, **kwargs):
        raise AssertionError(f"a whole-file read in the sharded evaluation: {args[:1]}")

    for name, options in OPTIONS.items():
        spy = ReadSpy(safetensors.safe_open)
        with (mock.patch.object(safetensors, "safe_open", spy),
              mock.patch.object(transformers.PreTrainedModel, "from_pretrained", refused),
              mock.patch("safetensors.torch.load_file", refused)):  # fmt: skip
            # The GPT-2 run through evaluate_run: written by the main process, layers.png's tables by rows too.
            evaluate = hf_llpf.evaluate_run if name == "gpt2" else evaluate_path
            result = evaluate(root / f"{name}_run", sharding="fsdp", progress=False, **options)
        rank = torch.distributed.get_rank()
        (root / f"{name}_fsdp_{rank}.json").write_text(json.dumps(result, default=str))
        (root / f"{name}_reads_{rank}.json").write_text(json.dumps(spy.reads))
    templated = evaluate_path(root / "cnn_run", sharding="fsdp", progress=False, template=template, **OPTIONS["cnn"])
    (root / f"cnn_template_{rank}.json").write_text(json.dumps(templated, default=str))
    _layer_tables(root / "gpt2_run", rank)


def _layer_tables(run: Path, rank: int) -> None:
    """layers.png's tables by rows, and (main process) as the unsharded plot computes them from whole points."""
    from hf_llpf.reporting.layer_plots import _layer_tables, layer_tables_by_rows

    names, log_var, rel_dist = layer_tables_by_rows(hf_llpf.RunPath(run), torch.device("cpu"))
    if rank == 0:
        whole = _layer_tables(hf_llpf.RunPath(run), names)
        tables = {"rows": [log_var.tolist(), rel_dist.tolist()], "whole": [t.tolist() for t in whole]}
        (run.parent / "gpt2_layer_tables.json").write_text(json.dumps(tables))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_cnn_pair):
    """The sharding tests' pairs (tiny GPT-2 with tied lm_head/wte; small_cnn with BatchNorm), each connected once."""
    root = fsdp_pairs(tmp_path_factory.mktemp("fsdp_eval"), small_cnn_pair)
    for name in OPTIONS:
        _connect(root, name)
    return root


def _close(x, y, scale: float) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= REL_TOL * max(abs(y), scale)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(a, b, scale) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k], scale) for k in y)
    return x == y


def _same_figures(sharded: dict, plain: dict, name: str) -> None:
    """Every figure of the points, the continuity rows, the linear baseline and the summary within REL_TOL; the
    evaluation settings the same but for the sharding and the wall time."""
    scale = max(abs(r[k]) for part in ("points", "linear", "continuity") for r in plain[part] for k in r
                if "loss" in k and isinstance(r[k], float) and math.isfinite(r[k]))  # fmt: skip
    for part in ("points", "linear", "continuity"):
        assert len(sharded[part]) == len(plain[part]) >= 1, (name, part)
        for s, p in zip(sharded[part], plain[part], strict=True):
            assert s.keys() == p.keys(), (name, part)
            bad = {k: (s[k], p[k]) for k in p if not _close(s[k], p[k], scale)}
            assert not bad, (name, part, bad)
    ss, ps = sharded["summary"], plain["summary"]
    assert ss["evaluation"].pop("sharding") == "fsdp" and ps["evaluation"].pop("sharding") == "none"
    ss["evaluation"].pop("seconds"), ps["evaluation"].pop("seconds")
    assert ss["evaluation"] == ps["evaluation"]
    assert ss.keys() == ps.keys() and {"llpf", "linear"} <= ps.keys()
    bad = {k: (ss[k], ps[k]) for k in ps if not _close(ss[k], ps[k], scale)}
    assert not bad, (name, bad)


def _read_by_rows_only(root: Path, name: str) -> None:
    """No process read a whole tensor of more than one row from a point's files (buffers are held whole): each read
    was that process's rows, FSDP2's chunk."""
    from hf_llpf.sharding import row_range

    first = sorted((root / f"{name}_run" / "points").iterdir())[0]
    shapes = {k: tuple(v.shape) for k, v in load_file(first / "model.safetensors").items()}
    buffers = {k for k in shapes if "running_" in k or k.endswith("num_batches_tracked")}
    points = len(list((root / f"{name}_run" / "points").iterdir()))
    for rank in (0, 1):
        reads = [r for r in json.loads((root / f"{name}_reads_{rank}.json").read_text()) if "/points/" in r[0]]
        assert len(reads) >= points * len(shapes)  # every tensor of every point was read
        for _, tensor, how, start, stop in reads:
            rows = shapes[tensor][0] if shapes[tensor] else 1
            if tensor in buffers or rows == 1:
                continue
            assert how == "rows" and (start, stop) == row_range(rows, rank=rank, world=2), (name, rank, tensor)


@pytest.mark.slow
def test_sharded_evaluate_equals_unsharded(runs):
    root = runs
    run_python([__file__, str(root)], processes=2, timeout=600)
    for name, options in OPTIONS.items():
        plain = json.loads(json.dumps(evaluate_path(root / f"{name}_run", progress=False, **options), default=str))
        parts = [json.loads((root / f"{name}_fsdp_{r}.json").read_text()) for r in (0, 1)]
        assert parts[0]["points"] == parts[1]["points"] and parts[0]["linear"] == parts[1]["linear"]
        assert len(plain["points"]) >= 3 and (name != "cnn" or "eval_train_loss_recal" in plain["points"][0])
        _same_figures(parts[0], plain, name)
        _read_by_rows_only(root, name)
    # evaluate_run sharded: the main process wrote the metrics, the report and every plot; layers.png's tables by
    # rows are the whole points' to rounding (float64 sums of float32 rows, merged over the processes).
    run = root / "gpt2_run"
    assert json.loads((run / "path_metrics.json").read_text())["summary"]["evaluation"]["sharding"] == "fsdp"
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["accuracy.png", "layers.png", "loss.png", "stages.png"]
    tables = json.loads((root / "gpt2_layer_tables.json").read_text())
    points = len(list((run / "points").iterdir()))
    for by_rows, whole in zip(tables["rows"], tables["whole"], strict=True):
        by_rows, whole = torch.tensor(by_rows), torch.tensor(whole)
        assert by_rows.shape == whole.shape and by_rows.shape[1] == points and by_rows.shape[0] > 10
        assert torch.allclose(by_rows, whole, rtol=1e-5, atol=1e-6), (by_rows - whole).abs().max()
    # The same rows in the same architecture: a template's structure gives the very same figures.
    by_template, by_config = (json.loads((root / f"cnn_{w}_0.json").read_text()) for w in ("template", "fsdp"))
    for result in (by_template, by_config):
        result["summary"]["evaluation"].pop("seconds")
    assert by_template == by_config


def test_sharded_evaluate_refused_without_a_process_group(tmp_path, capsys):
    """One process: refused before anything is read, naming the setting, the value and what is allowed (the API and
    the CLI, exit 2); an unknown value likewise; --baselines with --sharding fsdp refused."""
    from hf_llpf.cli import main

    with pytest.raises(ConfigError) as err:
        evaluate_path(tmp_path / "nope", sharding="fsdp")
    text = str(err.value)
    assert "sharding='fsdp': this evaluation has 1 process(es) and no process group; allowed: processes " in text
    assert "torchrun --standalone --nproc_per_node 2 -m hf_llpf.cli evaluate RUN --sharding fsdp" in text
    with pytest.raises(ConfigError, match=r"sharding='ddp': allowed: 'none' .* or 'fsdp'"):
        evaluate_path(tmp_path / "nope", sharding="ddp")
    run = tmp_path / "run"  # a run directory's metrics file, no point: the refusal comes first
    run.mkdir()
    (run / "path_metrics.json").write_text('{"points": [], "ticks": [], "summary": {}}')
    assert main(["evaluate", str(run), "--sharding", "fsdp", "--no-progress"]) == 2
    assert "sharding='fsdp': this evaluation has 1 process(es)" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--baselines", "linear", "--sharding", "fsdp"]) == 2
    said = capsys.readouterr().err
    assert (
        "--sharding fsdp with --baselines: the baselines are built and judged unsharded; allowed: --sharding none"
        in said
    )
    assert [p.name for p in tmp_path.rglob("*")] == ["run", "path_metrics.json"]  # nothing written


def test_each_process_scores_every_nth_batch_and_makes_the_passes_it_lacks():
    from hf_llpf.evaluation.sharded import _Share

    for total, rank, mine, missing in ((5, 0, [0, 2, 4], 0), (5, 1, [1, 3], 1), (4, 1, [1, 3], 0), (1, 1, [], 1)):
        share = _Share(list(range(total)), rank, 2)
        assert list(share) == mine and share.missing == missing and share.spare == 0, (total, rank)


def test_a_template_is_copied_onto_meta_without_its_weights():
    """A path of plain modules: the sharded model's structure is the template's copy, parameters on meta (a tie kept),
    buffers as the template holds them; the template itself untouched."""
    from types import SimpleNamespace

    from hf_llpf.evaluation.sharded import _structure

    template = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 3))
    template[2].weight = template[0].weight  # tied
    template[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    model = _structure(SimpleNamespace(template=template))
    assert all(p.is_meta for p in model.parameters()) and model[2].weight is model[0].weight
    assert torch.equal(model[1].running_mean, torch.full((3,), 0.25)) and not model[1].running_mean.is_meta
    assert all(torch.equal(before[k], v) and not v.is_meta for k, v in template.state_dict().items())


def test_points_without_a_config_and_no_template_are_refused(tmp_path):
    from types import SimpleNamespace

    from hf_llpf.evaluation.sharded import _structure

    path = SimpleNamespace(template=None, checked_point_dir=lambda i: tmp_path)
    with pytest.raises(ConfigError) as err:
        _structure(path)
    assert f"sharding='fsdp': point 0 ({tmp_path}) is not a timm or transformers model folder" in str(err.value)
    assert "allowed: such points, a template (template=, for paths of plain modules), or sharding='none'" in str(
        err.value
    )


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
