"""Every CLI command with a table of bad inputs: exit code 2, one short message naming the problem, no traceback,
and nothing deleted or written (the tree's content hashed before and after). Also: a full disk at each writer (one
paragraph naming the file, no temporary left, and the run resumes), and a Hub id that cannot be fetched fails
fast."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hub_fixtures import make_run_dir

from hf_llpf.cli import main
from hf_llpf.models.endpoints import as_endpoint, create_model, save_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A workspace: random small_cnn endpoints (1 and 3 channels), a run directory, data files, odd files."""
    root = tmp_path_factory.mktemp("cli_errors")
    for name, chans in (("A", 1), ("B", 1), ("C3", 3)):
        torch.manual_seed(len(name) + chans)
        model = create_model("small_cnn", num_classes=10, in_chans=chans)
        ep = as_endpoint(model)
        save_model(model, root / name, kind=ep.kind, arch=ep.arch)
    make_run_dir(root / "run", kind="timm")
    (root / "afile").write_text("not a folder")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8, 8), dtype=np.uint8) for _ in range(40)]
    for name, labels in {
        "negative": [-1] + [i % 10 for i in range(39)],
        "strings": ["cat"] * 40,
        "floats": [0.5 + i % 10 for i in range(40)],
    }.items():
        datasets.Dataset.from_dict({"image": images, "label": labels}).to_parquet(str(root / f"{name}.parquet"))
    datasets.Dataset.from_dict({"image": [], "label": []}).to_parquet(str(root / "empty.parquet"))
    rgb = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(40)]
    datasets.Dataset.from_dict({"image": rgb, "label": [i % 10 for i in range(40)]}).to_parquet(
        str(root / "rgb_arrays.parquet")
    )
    (root / "bad_config").mkdir()
    (root / "bad_config" / "config.json").write_text("{not json")
    shutil.copy(root / "A" / "model.safetensors", root / "bad_config" / "model.safetensors")
    shutil.copytree(root / "A", root / "A_processor")
    (root / "A_processor" / "preprocessor_config.json").write_text('{"image_mean": "x"}')
    datasets.Dataset.from_dict({"image": images[:1], "label": [0]}).to_parquet(str(root / "one_row.parquet"))
    _text_workspace(root)
    import hf_llpf

    # A real run with a checkpoint, for the --resume rows.
    hf_llpf.connect(root / "A", root / "B", "digits", config=FAST, run_dir=root / "real", progress=False)
    return root


FAST = {"step_r": 0.25, "min_iters": 1, "max_iters": 2, "checkpoint_every": 1, "arrival_tol": 0.05,
        "loss_ceiling": None}  # fmt: skip
FAST_ARGS = [f"{k}={'null' if v is None else v}" for k, v in FAST.items()]


def _text_workspace(root: Path) -> None:
    """An (untrained) tiny BERT with its tokenizer, and text files: one null text in 120, all texts empty."""
    from text_fixtures import reviews, word_tokenizer
    from tiny_models import tiny_bert

    tok = word_tokenizer()
    tiny_bert(0, vocab_size=len(tok)).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    data = reviews(120, seed=3)
    texts = list(data["text"])
    texts[57] = None
    datasets.Dataset.from_dict({"text": texts, "label": data["label"]}).to_parquet(str(root / "null_text.parquet"))
    empty = {"text": [""] * 120, "label": data["label"]}
    datasets.Dataset.from_dict(empty).to_parquet(str(root / "empty_texts.parquet"))


def _damaged_run(w: Path, name: str, damage) -> Path:
    run = w / f"run_{name}"
    if not run.exists():
        shutil.copytree(w / "run", run)
        damage(run)
    return run


def _point(run: Path, i: int) -> Path:
    return run / json.loads((run / "path_metrics.json").read_text())["points"][i]["point"] / "model.safetensors"


def _summary(run: Path, change) -> None:
    data = json.loads((run / "path_metrics.json").read_text())
    change(data["summary"])
    (run / "path_metrics.json").write_text(json.dumps(data))


def _huge_tick(run: Path) -> None:
    text = (run / "path_metrics.json").read_text()
    (run / "path_metrics.json").write_text(text.replace('"tick": 0', '"tick": ' + "9" * 5000, 1))


ALIAS_BOMB = "".join(f"{x}: &{x} [{', '.join([f'*{p}'] * 9)}]\n" for p, x in zip("abcdefgh", "bcdefghi"))
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB

DAMAGE = {
    "missing_point": lambda run: shutil.rmtree(_point(run, 2).parent),
    "truncated_point": lambda run: _point(run, 2).write_bytes(_point(run, 2).read_bytes()[:100]),
    "corrupt_metrics": lambda run: (run / "path_metrics.json").write_text('{"points": [1, 2'),
    "metrics_not_a_mapping": lambda run: (run / "path_metrics.json").write_text("[1, 2, 3]"),
    "odd_layer_groups": lambda run: (run / "layer_groups.json").write_text('"stages"'),
    "odd_endpoints": lambda run: (run / "endpoints.json").write_text("[]"),
    "nan_point": lambda run: _nan_point(_point(run, 2)),
    "deep_json": lambda run: (run / "path_metrics.json").write_text("[" * 100_000),
    "huge_integer": _huge_tick,
    "summary_run_int": lambda run: _summary(run, lambda s: s.update(run=7)),
    "certification_string": lambda run: _summary(run, lambda s: s.setdefault("run", {}).update(certification="yes")),
    "config_not_yaml": lambda run: (run / "llpf_config.yaml").write_text("data: [\n"),
    "config_not_utf8": lambda run: (run / "llpf_config.yaml").write_bytes(b"seed: \xff\xfe\n"),
    "config_alias_bomb": lambda run: (run / "llpf_config.yaml").write_text(ALIAS_BOMB),
    "readme_not_utf8": lambda run: (run / "README.md").write_bytes(b"# run\n\xff\xfe notes\n"),
}
# Only push reads the CSV (evaluate writes it anew from path_metrics.json).
PUSH_DAMAGE = {**DAMAGE, "csv_not_utf8": lambda run: (run / "path_metrics.csv").write_bytes(b"tick,point\n\xff\n")}
# What the message of each damage names (evaluate, push, export and --resume alike).
DAMAGE_WORDS = {
    "missing_point": ["points[2]", "missing"],
    "truncated_point": ["points[2]", "not a readable safetensors"],
    "corrupt_metrics": ["path_metrics.json", "not valid JSON"],
    "metrics_not_a_mapping": ["path_metrics.json", "expected a JSON object, got a list"],
    "odd_layer_groups": ["layer_groups.json"],
    "odd_endpoints": ["endpoints.json"],
    "nan_point": ["points[2]", "non-finite"],
    "deep_json": ["path_metrics.json", "nested too deeply"],
    "huge_integer": ["path_metrics.json", "not readable JSON", "4300 digits"],
    "summary_run_int": ["path_metrics.json", "summary.run:", "expected a JSON object, got integer 7"],
    "certification_string": ["summary.run.certification", "expected a JSON object or null, got string 'yes'"],
    "config_not_yaml": ["llpf_config.yaml", "not valid YAML", "line 2"],
    "config_not_utf8": ["llpf_config.yaml", "not UTF-8"],
    "config_alias_bomb": ["llpf_config.yaml", "aliases (*name) are refused"],
    "readme_not_utf8": ["README.md", "not UTF-8 text (byte 6)"],
    "csv_not_utf8": ["path_metrics.csv", "not UTF-8 text"],
}


def _nan_point(file: Path) -> None:
    import safetensors.torch

    state = safetensors.torch.load_file(str(file))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    safetensors.torch.save_file(state, str(file))


def _evaluate_argv(name: str):
    return lambda w: ["evaluate", _damaged_run(w, name, DAMAGE[name])]


def _export_argv(name: str):
    return lambda w: ["export", _damaged_run(w, name, DAMAGE[name]), "--out", w / "o"]


def _resume_argv(name: str, damage):
    def argv(w: Path) -> list:
        run = w / f"real_{name}"
        if not run.exists():
            shutil.copytree(w / "real", run)
            damage(run)
        return ["connect", w / "A", w / "B", "--data", "digits", "--out", run, "--resume", "--no-progress", *FAST_ARGS]

    return argv


RESUME_DAMAGE = {
    "config_not_yaml": (DAMAGE["config_not_yaml"], DAMAGE_WORDS["config_not_yaml"]),
    "config_not_utf8": (DAMAGE["config_not_utf8"], DAMAGE_WORDS["config_not_utf8"]),
    "config_alias_bomb": (
        lambda run: (run / "llpf_config.yaml").write_text((run / "llpf_config.yaml").read_text() + ALIAS_BOMB),
        DAMAGE_WORDS["config_alias_bomb"],
    ),
    "endpoints_list": (
        lambda run: (run / "endpoints.json").write_text("[]"),
        ["endpoints.json", "expected a JSON object, got a list"],
    ),
    "endpoints_deep": (
        lambda run: (run / "endpoints.json").write_text('{"A": ' * 50_000),
        ["endpoints.json", "nested too deeply"],
    ),
}


# (id, argv builder, substrings the message must hold)
CASES = [
    ("recipe-malformed", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--recipe", _yaml(w, "a: [")],
     ["not valid YAML", "line"]),
    ("recipe-not-utf8", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--recipe", _yaml(w, b"\xff\xfe")],
     ["not UTF-8"]),
    ("recipe-python-tag",
     lambda w: ["train", "--out", w / "o", "--recipe", _yaml(w, "!!python/object/apply:os.system ['true']")],
     ["Python tags are refused"]),
    ("recipe-duplicate-key", lambda w: ["train", "--out", w / "o", "--recipe", _yaml(w, "lr: 0.1\nlr: 0.2\n")],
     ["duplicate key 'lr'"]),
    ("override-unparsable", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "lr=["], ["override 'lr=['"]),
    ("lr-inf", lambda w: ["train", "--out", w / "o", "lr=.inf"], ["lr=inf", "finite"]),
    ("std-zero", lambda w: ["train", "--out", w / "o", "data.std=[0]"], ["data.std", "> 0"]),
    ("mean-wrong-channels", lambda w: ["train", "--out", w / "o", "data.mean=[0.1,0.2]", "epochs=1"],
     ["data.mean", "2 values", "1 channel"]),
    ("max-ticks-bool", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "max_ticks=true"],
     ["m2m.max_ticks=True", "not a boolean"]),
    ("repair-lr-negative", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "repair.lr=-1"],
     ["repair.lr=-1: Input should be greater than 0"]),
    ("flat-lr-negative", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "lr=-1"],
     ["repair.lr=-1: Input should be greater than 0"]),
    ("block-key-unknown", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "repair.lrr=1"],
     ["repair.lrr: unknown key (did you mean 'lr'?); valid keys: lr, momentum"]),
    ("seed-overflow", lambda w: ["train", "--out", w / "o", "seed=99999999999999999999999"], ["seed=", "less than"]),
    ("labels-negative", lambda w: ["train", "--data", w / "negative.parquet", "--out", w / "o", "epochs=1"],
     ["label", "-1", "0 or more"]),
    ("labels-strings", lambda w: ["train", "--data", w / "strings.parquet", "--out", w / "o", "epochs=1"],
     ["label", "string", "integer class labels"]),
    ("labels-floats", lambda w: ["train", "--data", w / "floats.parquet", "--out", w / "o", "epochs=1"],
     ["label", "float", "integer class labels"]),
    ("data-empty", lambda w: ["train", "--data", w / "empty.parquet", "--out", w / "o", "epochs=1"], ["no examples"]),
    ("data-missing-file", lambda w: ["train", "--data", w / "nope.parquet", "--out", w / "o"],
     ["no local file or folder", "nope.parquet"]),
    ("model-args-unknown", lambda w: ["train", "--out", w / "o", "model_args={widht: 4}", "epochs=1"],
     ["model_args", "widht"]),
    # Image files are converted to the model's channels (digits become RGB for C3); pixel arrays are not.
    ("channel-mismatch", lambda w: ["connect", w / "A", w / "B", "--data", w / "rgb_arrays.parquet", "--out", w / "o"],
     ["1 channel", "3"]),
    ("connect-out-is-file", lambda w: ["connect", w / "A", w / "B", "--out", w / "afile"], ["is a file"]),
    ("connect-out-under-file", lambda w: ["connect", w / "A", w / "B", "--out", w / "afile" / "x"],
     ["under the file"]),
    ("train-out-is-file", lambda w: ["train", "--out", w / "afile", "epochs=1"], ["is a file"]),
    ("export-out-is-file", lambda w: ["export", w / "run", "--out", w / "afile"], ["afile"]),
    ("endpoint-bad-config", lambda w: ["spheres", w / "bad_config", w / "A"], ["config.json", "not valid JSON"]),
    ("endpoint-missing-with-slash", lambda w: ["spheres", "no/such", w / "A"],
     ["no local folder 'no/such'", "Hub id"]),
    ("method-unknown", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--method", "bezierr"],
     ["unknown method 'bezierr'", "m2m", "cross-sphere"]),
    ("points-for-llpf", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--points", "5"],
     ["--points: a curve method's setting", "bezier"]),
    ("repeats-of-a-curve",
     lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--method", "bezier", "--repeats", "2"],
     ["--repeats 2", "bezier has none"]),
    ("curve-setting-unknown", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--method", "bezier",
                                         "bezier.lrr=0.1"], ["unknown bezier setting 'lrr'", "recal_batches"]),
    ("demo-threads-zero", lambda w: ["demo", "--out", w / "o", "--threads", "0"], ["--threads"]),
    ("threads-zero", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--threads", "0"], ["--threads"]),
    ("repeats-zero", lambda w: ["connect", w / "A", w / "B", "--out", w / "o", "--repeats", "0"], ["--repeats"]),
    ("push-revision-climbs", lambda w: ["push", w / "run", "org/x", "--revision", "../x"], ["revision", "../x"]),
    ("groups-json-under-file", lambda w: ["groups", "small_cnn", "--json", w / "afile" / "x.json"],
     ["--json", "under the file"]),
    ("groups-stray-override", lambda w: ["groups", "small_cnn", "a=b"], ["unrecognized arguments: a=b"]),
    ("groups-image-size-huge", lambda w: ["groups", "small_cnn", "--image-size", "100000"], ["image_size", "4096"]),
    ("groups-image-size-without-data", lambda w: ["groups", w / "A", "--image-size", "16"],
     ["--image-size", "--data"]),
    ("recipe-alias", lambda w: ["train", "--out", w / "o", "--recipe", _yaml(w, "x: &x 1\nlr: *x\n")],
     ["not valid YAML", "aliases (*name) are refused"]),
    ("recipe-deep", lambda w: ["train", "--out", w / "o", "--recipe", _yaml(w, "[" * 100_000)], ["nested too deeply"]),
    ("processor-malformed", lambda w: ["connect", w / "A_processor", w / "B", "--out", w / "o", "--no-progress"],
     ["preprocessor_config.json", "image_mean", "expected a JSON list, got string 'x'"]),
    ("compare-out-is-file", lambda w: ["compare", w / "A", w / "B", "--data", "digits", "--out", w / "afile"],
     ["--out", "afile", "is a file"]),
    ("data-one-row", lambda w: ["train", "--data", w / "one_row.parquet", "--out", w / "o", "epochs=1"],
     ["1 example(s)", "at least 2 examples"]),
    ("text-null", lambda w: ["connect", w / "bert", w / "bert", "--data", w / "null_text.parquet", "--out", w / "o"],
     ["text_column 'text'", "missing (null"]),
    ("text-all-empty",
     lambda w: ["connect", w / "bert", w / "bert", "--data", w / "empty_texts.parquet", "--out", w / "o"],
     ["text_column 'text'", "are empty"]),
    *[(f"evaluate-{name}", _evaluate_argv(name), DAMAGE_WORDS[name]) for name in DAMAGE],
    *[(f"export-{name}", _export_argv(name), DAMAGE_WORDS[name])
      for name in ("config_not_yaml", "config_not_utf8", "summary_run_int", "deep_json")],
    *[(f"resume-{name}", _resume_argv(name, damage), words) for name, (damage, words) in RESUME_DAMAGE.items()],
]  # fmt: skip


def _yaml(w: Path, content: str | bytes) -> Path:
    f = w / f"recipe_{abs(hash(content))}.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def _run(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the hash of its content (folders: ``dir``)."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
    }


def _one_paragraph(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 12, err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(case, w, capsys):
    name, argv, words = case
    args = argv(w)
    before = _tree(w)
    rc = _run(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert _tree(w) == before
    assert not os.path.exists(w / "o")


class _NoHub:
    """An HfApi stand-in that fails the test when used: nothing may be sent before the run's files are read."""

    def __getattr__(self, name):
        pytest.fail(f"the Hub was contacted ({name})")


@pytest.mark.parametrize(
    "name",
    ["summary_run_int", "certification_string", "config_not_yaml", "config_not_utf8", "deep_json", "readme_not_utf8"],
)  # fmt: skip
def test_push_refuses_a_damaged_run_before_sending_anything(name, w, capsys, monkeypatch):
    import hf_llpf.hub.push as push

    monkeypatch.setattr(push, "check_online", lambda action: None)  # the tests are offline; the files are read first
    monkeypatch.setattr(push, "hub_api", lambda *a, **k: _NoHub())
    run = _damaged_run(w, name, PUSH_DAMAGE[name])
    before = _tree(w)
    rc = _run(["push", run, "org/x", "--token", "hf_unused_token_x"])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    for word in DAMAGE_WORDS[name]:
        assert word in err, f"{word!r} not in: {err}"
    assert "hf_unused_token_x" not in err and _tree(w) == before


def test_push_refuses_a_metrics_csv_that_is_not_utf8(w):
    from hf_llpf.errors import RunDirectoryError
    from hf_llpf.hub.push import _filtered_metrics  # read once the branch is known, before any upload

    run = _damaged_run(w, "csv_not_utf8", PUSH_DAMAGE["csv_not_utf8"])
    with pytest.raises(RunDirectoryError, match=r"path_metrics.csv: not UTF-8 text \(byte 11\)"):
        _filtered_metrics(run, {"points/t_000000"})


@pytest.mark.parametrize("name", ["summary_run_int", "certification_string", "huge_integer"])
def test_evaluate_of_a_damaged_published_path_is_one_clear_error(name, w, tmp_path, capsys, monkeypatch):
    import hf_llpf.hub.load as load

    snapshot = tmp_path / "models--org--path" / "snapshots" / ("a" * 40)
    shutil.copytree(_damaged_run(w, name, DAMAGE[name]), snapshot)
    monkeypatch.setattr(load, "snapshot", lambda *a, **k: snapshot)  # what a download of org/path would give
    before = _tree(tmp_path)
    rc = _run(["evaluate", "org/path", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    for word in DAMAGE_WORDS[name]:
        assert word in err, f"{word!r} not in: {err}"
    assert _tree(tmp_path) == before


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_push_to_an_unreachable_hub_is_a_clear_error(w):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(w / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    before = sorted(p.relative_to(w).as_posix() for p in (w / "run").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "hf_llpf.cli", "push", str(w / "run"), "org/path", "--token", "hf_unused_token_x"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the Hub" in proc.stderr and "Traceback" not in proc.stderr
    assert "hf_unused_token_x" not in proc.stderr
    assert sorted(p.relative_to(w).as_posix() for p in (w / "run").rglob("*")) == before


# ---- a full disk at each writer: one paragraph naming the file, no temporary left, and the run resumes ----------

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def _full_disk_at_fsync(monkeypatch, marker: str, *, at: int) -> None:
    """The ``at``-th atomic write of a file whose name holds ``marker`` fails as on a full disk, after its bytes went
    to the temporary file (a failed write names no file)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if marker in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            seen.append(fd)
            if len(seen) == at:
                raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _full_disk_at_point(monkeypatch, *, at: int) -> None:
    """The ``at``-th point is half written when the disk fills."""
    import hf_llpf.run.rundir as rundir

    real, calls = rundir.save_model, []

    def save_model(model, folder, **kwargs):
        calls.append(folder)
        if len(calls) == at:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"half a point")
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        return real(model, folder, **kwargs)

    monkeypatch.setattr(rundir, "save_model", save_model)


def _full_disk_at_checkpoint(monkeypatch, *, at: int) -> None:
    """The ``at``-th checkpoint's tensor file is half written when the disk fills; safetensors reports it as its own
    error type wrapping the I/O error, as it does on a real full disk."""
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        if "checkpoint" in str(filename):
            calls.append(filename)
            if len(calls) == at:
                Path(filename).write_bytes(b"half a checkpoint")
                raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


FULL_DISK = {  # writer: (inject, what the message names)
    "points": (lambda m: _full_disk_at_point(m, at=4), "points/.tmp_t_000003"),
    "checkpoint": (lambda m: _full_disk_at_checkpoint(m, at=3), "checkpoint/tensors-3.safetensors"),
    "metrics": (lambda m: _full_disk_at_fsync(m, "path_metrics.json", at=3), "path_metrics.json"),
}


def _temporaries(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".tmp")]


@pytest.mark.parametrize("writer", list(FULL_DISK))
def test_a_full_disk_while_connecting_is_one_message_and_the_run_resumes(writer, w, tmp_path, capsys, monkeypatch):
    from conftest import state_equal

    import hf_llpf

    inject, names = FULL_DISK[writer]
    run = tmp_path / "run"
    argv = ["connect", w / "A", w / "B", "--data", "digits", "--out", run, "--no-progress", *FAST_ARGS]
    with monkeypatch.context() as m:
        inject(m)
        rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    assert f"{run}/{names}: {ENOSPC_TEXT} (ENOSPC)" in err, err
    assert f"run the same command with --resume: {run} continues from its last checkpoint" in err
    assert _temporaries(run) == []
    assert _run([*argv, "--resume"]) == 0, capsys.readouterr().err
    resumed, reference = hf_llpf.RunPath(run), hf_llpf.RunPath(w / "real")
    assert resumed.ticks == reference.ticks
    assert all(state_equal(resumed.state_dict_at(i), reference.state_dict_at(i)) for i in (1, len(reference) // 2, -1))
    assert _temporaries(run) == []


@pytest.mark.slow  # a whole certified run or evaluation: kept out of the fast suite
def test_a_full_disk_while_plotting_is_one_message_and_evaluate_runs_again(w, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(w / "real", run)
    with monkeypatch.context() as m:
        _full_disk_at_fsync(m, "loss.png", at=1)
        rc = _run(["evaluate", run, "--no-progress", "--train-subset", "64"])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    assert f"{run}/plots/loss.png: {ENOSPC_TEXT} (ENOSPC); the disk is full" in err
    assert _temporaries(run) == [] and not (run / "plots" / "loss.png").exists()
    assert _run(["evaluate", run, "--no-progress", "--train-subset", "64"]) == 0
    assert (run / "plots" / "loss.png").stat().st_size > 0 and _temporaries(run) == []


def test_a_full_disk_while_exporting_leaves_nothing(w, tmp_path, capsys, monkeypatch):
    out = tmp_path / "exported"
    real = shutil.copyfile

    def copyfile(src, dst, **kwargs):  # half the file, then the disk is full (the error names the source)
        Path(dst).write_bytes(Path(src).read_bytes()[:64])
        raise OSError(errno.ENOSPC, ENOSPC_TEXT, str(src))

    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", copyfile)
        rc = _run(["export", w / "real", "--out", out])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_paragraph(err)
    assert f"{tmp_path}/.exported.tmp/" in err and "(ENOSPC)" in err and "run the same command again" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert shutil.copyfile is real and _run(["export", w / "real", "--out", out]) == 0
    assert (out / "model.safetensors").is_file()


# ---- a Hub id that cannot be fetched fails fast ------------------------------------------------------------------


def test_a_hub_id_is_read_from_the_cache_only_when_the_hub_cannot_be_reached(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    import hf_llpf.hub_client.access as access
    from hf_llpf.errors import OfflineError
    from hf_llpf.models.endpoints import load_endpoint

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(access, "offline_mode", lambda: False)
    monkeypatch.setattr(access, "hub_unreachable", lambda *a, **k: "hub.invalid:443 did not accept a connection")
    with pytest.raises(OfflineError, match="no local folder 'no/such'.*hub.invalid:443 did not accept a connection"):
        load_endpoint("no/such")
    assert calls == [{"revision": None, "local_files_only": True}]  # one cache lookup: no download, no retries


def test_hub_unreachable_is_one_connection_attempt(monkeypatch):
    import socket

    from hf_llpf.hub_client.access import _PROXY_VARIABLES, hub_unreachable

    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert hub_unreachable(url) is None
    assert "did not accept a connection" in hub_unreachable(url)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable(url) is None  # behind a proxy only the download itself can tell
