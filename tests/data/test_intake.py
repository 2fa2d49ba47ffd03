"""One data intake for every entry point (hf_llpf.data.intake): the DataLoader connect took is what evaluate_run and
compare take too; a train-only evaluation reports, prints, plots and publishes no test figure."""

import pathlib

import datasets
import pytest
import torch
import yaml
from tiny_models import tiny_gpt2

import hf_llpf
from hf_llpf.api import evaluate_run
from hf_llpf.cli.render import evaluated
from hf_llpf.data.intake import GivenData, read_data
from hf_llpf.errors import ConfigError, DataMismatchError
from hf_llpf.evaluation import evaluate_path
from hf_llpf.run import read_metrics

torch.set_num_threads(1)

N, BATCH = 32, 16
# A straight line without a ceiling: a run written in about a second, whose points the evaluation judges.
LINE = {"method": "linear", "loss_ceiling": None}
EVAL = {"linear_points": 3, "continuity_k": 1, "progress": False}


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (N, 8), generator=torch.Generator().manual_seed(seed))


def _loader(ids: torch.Tensor, *, shuffle: bool) -> torch.utils.data.DataLoader:
    """A DataLoader of causal-LM dict batches, as a user hands one to connect (shuffled: a training loader)."""
    rows = [{"input_ids": i, "labels": i} for i in ids]
    return torch.utils.data.DataLoader(
        rows, batch_size=BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(1)
    )


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """The model's eval-mode loss over ``ids`` in order, in batches of BATCH, weighted by batch size (by hand)."""
    model.eval()
    losses = [float(model(input_ids=ids[i : i + BATCH], labels=ids[i : i + BATCH]).loss) for i in range(0, N, BATCH)]
    return sum(losses) * BATCH / N


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """Two tiny GPT-2 endpoints, the shuffled training loader connect took, and the run connect wrote with it."""
    a, b = tiny_gpt2(0), tiny_gpt2(1)
    ids = _ids(0)
    loader = _loader(ids, shuffle=True)
    run = tmp_path_factory.mktemp("intake") / "run"
    path = hf_llpf.connect(a, b, loader, config=LINE, run_dir=run, progress=False)
    return {"a": a, "b": b, "ids": ids, "loader": loader, "path": path}


def _train_columns(rows: list[dict]) -> list[tuple[float, float]]:
    return [(r["eval_train_loss"], r["eval_train_acc"]) for r in rows]


def test_evaluate_run_judges_the_very_loader_connect_took_with_no_test_figure(lm):
    path, loader = lm["path"], lm["loader"]
    alone = evaluate_run(path, data=loader, report=False, **EVAL)
    split = evaluate_run(path, data={"train": loader}, report=False, **EVAL)
    # The same figures, bit for bit: a shuffling loader is read in its dataset's order, every pass the same batches.
    assert _train_columns(alone["points"]) == _train_columns(split["points"])
    assert _train_columns(alone["linear"]) == _train_columns(split["linear"])
    assert [c["loss"] for c in alone["continuity"]] == [c["loss"] for c in split["continuity"]]
    assert alone["summary"]["llpf"] == split["summary"]["llpf"]
    assert alone["points"][0]["eval_train_loss"] == pytest.approx(_mean_loss(lm["a"], lm["ids"]), rel=1e-6)
    assert alone["points"][-1]["eval_train_loss"] == pytest.approx(_mean_loss(lm["b"], lm["ids"]), rel=1e-6)
    # No test column anywhere, no test range, and the evaluation says it had no test split.
    for row in alone["points"] + alone["linear"]:
        assert not {"test_loss", "test_acc"} & set(row)
    for figures in (alone["summary"]["llpf"], alone["summary"]["linear"]):
        assert not {"test_loss_range", "test_acc_range"} & set(figures)
    ev = alone["summary"]["evaluation"]
    assert (ev["train_examples"], ev["test_examples"], ev["continuity_examples"]) == (N, None, N)
    written = read_metrics(path.root)
    assert (
        not any("test_loss" in p for p in written["points"])
        and "test_loss" not in (path.root / "path_metrics.csv").read_text()
    )


def test_a_dataset_and_a_test_split_are_read_as_connect_reads_them(lm):
    path, ids = lm["path"], lm["ids"]
    loader = evaluate_path(path, data=lm["loader"], **EVAL)
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    dataset = evaluate_path(path, data=ds, batch_size=BATCH, **EVAL)  # read in order, batches of batch_size
    flat = [x for row in _train_columns(loader["points"]) for x in row]
    assert [x for row in _train_columns(dataset["points"]) for x in row] == pytest.approx(flat, abs=1e-7)
    assert "test_loss" not in dataset["points"][0]
    held_out = _ids(1)
    both = evaluate_path(path, data={"train": ds, "test": _loader(held_out, shuffle=False)}, batch_size=BATCH, **EVAL)
    assert both["points"][0]["test_loss"] == pytest.approx(_mean_loss(lm["a"], held_out), rel=1e-6)
    assert both["summary"]["evaluation"]["test_examples"] == N
    assert _train_columns(both["points"]) == _train_columns(dataset["points"])


def test_connect_records_a_loader_and_its_dict_of_splits_alike(lm, tmp_path):
    def recorded(data, name):
        hf_llpf.connect(lm["a"], lm["b"], data, config=LINE, run_dir=tmp_path / name, progress=False)
        return yaml.safe_load((tmp_path / name / "llpf_config.yaml").read_text())["data"]

    plain = recorded(lm["loader"], "plain")
    assert plain["source"] == "<DataLoader>" and plain["recorded"] == {"given_as": "DataLoader", "train_examples": N}
    assert recorded({"train": lm["loader"], "test": _loader(_ids(1), shuffle=False)}, "split") == plain


def test_a_train_only_report_table_plots_and_card_claim_no_test_figure(lm):
    from hf_llpf.hub.card import Publication, build_model_card

    path = lm["path"]
    result = evaluate_run(path, data=lm["loader"], **EVAL)
    readme = (path.root / "README.md").read_text()
    # The loader's batches are used whole: train_subset and seed never cut them, and nothing claims they did.
    assert result["summary"]["evaluation"]["train_data"] == {"form": "own batches", "batches": N // BATCH}
    assert (
        f"evaluated on {N} training examples (your {N // BATCH} batches, used whole) and no test split (test figures "
        "not evaluated)" in readme
    )
    assert "subset" not in readme.replace("continuity subset", "") and "seed" not in readme
    assert "| test loss range | not evaluated | not evaluated |" in readme
    assert all((path.root / "plots" / f"{n}.png").stat().st_size > 0 for n in ("loss", "accuracy", "layers"))
    printed = evaluated(result, run_dir=None, causal_lm=True)
    assert f"evaluated on {N} train examples (no test split: test figures not evaluated)" in printed
    assert "; test not evaluated (no test split)" in printed and printed.splitlines()[-1].startswith("verdict: ")
    card = str(build_model_card(path.root, repo_id="org/lm", publication=Publication(root=(1, "mid"))))
    assert "(split `train` only: the evaluation was given no test split, so no test figure was measured)" in card
    assert "against the run's loss ceiling; no test figure was measured." in card
    assert "| test loss |" not in card and "| train loss |" in card and "test figures are measured" not in card
    assert f"split `train`, {N} examples (your {N // BATCH} batches, used whole), eval mode |" in card
    assert "fixed subset" not in card


def test_compare_takes_the_loader_and_judges_every_method_on_it(lm, tmp_path, monkeypatch):
    # Each path's own plots are drawn as after any evaluation (the report test above draws a train-only one); here
    # they would only cost time. The comparison's plot is drawn.
    monkeypatch.setattr("hf_llpf.reporting.plots.plot_path", lambda *a, **k: [])
    config = {"method": "m2m", "step_r": 0.5, "min_iters": 1, "max_iters": 2, "arrival_tol": 0.2, "save_every": 1000,
              "loss_ceiling": None}  # fmt: skip
    table = hf_llpf.compare(lm["a"], lm["b"], lm["loader"], out_dir=tmp_path / "c", methods=["llpf", "linear"],
                            config=config, points=3, continuity_k=0)  # fmt: skip
    by = {r["method"]: r for r in table["rows"]}
    assert list(by) == ["llpf", "linear"] and {r["status"] for r in by.values()} == {"ok"}
    assert table["probe"]["train_examples"] == N and table["probe"]["test"] is None
    assert table["probe"]["test_examples"] is None and table["settings"]["data"] == "<DataLoader>"
    start = _mean_loss(lm["a"], lm["ids"])
    for row in by.values():
        assert row["test_loss_range"] is None and row["test_acc_range"] is None
        assert row["probe"]["train"] == [table["probe"]["train"]]  # every pass saw the same batches
        points = read_metrics(row["run_dir"])["points"]
        assert points[0]["eval_train_loss"] == pytest.approx(start, rel=1e-6)  # θ_A on the same data
        assert row["max_train_loss"] == max(p["eval_train_loss"] for p in points)
    assert by["linear"]["points"] == 3 and by["llpf"]["sgd_iters"] > 0 and by["linear"]["sgd_iters"] == 0
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| llpf | " in md and "| not evaluated | not evaluated |" in md
    assert "no test split (test figures not evaluated)." in md and (tmp_path / "c" / "comparison.png").stat().st_size
    # The table and every method's report say the batches were used whole (evaluated through compare's recorders).
    assert f"{N} train examples (your {N // BATCH} batches, used whole; sha256 " in md
    for row in by.values():
        readme = (pathlib.Path(row["run_dir"]) / "README.md").read_text()
        assert f"{N} training examples (your {N // BATCH} batches, used whole)" in readme and "seed" not in readme


def test_data_that_fit_no_form_are_refused_naming_the_field(lm):
    with pytest.raises(ConfigError, match=r"data: a dict of splits has no 'train' key; allowed keys: 'train' \("):
        read_data({"test": lm["loader"]})
    with pytest.raises(ConfigError, match="train_data: a dict of splits has key 'val'; allowed keys"):
        read_data({"train": lm["loader"], "val": lm["loader"]}, field="train_data")
    with pytest.raises(DataMismatchError, match=r"^data\['train'\]=str: expected a data spec, DataConfig, DataBundle"):
        evaluate_path(lm["path"], data={"train": "digits"})
    with pytest.raises(
        DataMismatchError, match=r"^train_data=int: expected .*\{'train': batches\[, 'test': batches\]\}"
    ):
        hf_llpf.connect(lm["a"], lm["b"], 42, config=LINE, run_dir=lm["path"].root.parent / "never", progress=False)
    assert not (lm["path"].root.parent / "never").exists()
    assert read_data({"source": "digits"}).spec.source == "digits"  # a dict of DataConfig fields is a spec
    assert read_data(pathlib.Path("reviews.parquet")) == GivenData("spec", spec="reviews.parquet")
