"""Every CLI command with a table of bad inputs: exit code 2, one short message naming the problem, no traceback,
and nothing deleted or written."""

from __future__ import annotations

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
from hf_llpf.models import as_endpoint, create_model, save_model

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
    return root


def _damaged_run(w: Path, name: str, damage) -> Path:
    run = w / f"run_{name}"
    if not run.exists():
        shutil.copytree(w / "run", run)
        damage(run)
    return run


def _point(run: Path, i: int) -> Path:
    return run / json.loads((run / "path_metrics.json").read_text())["points"][i]["point"] / "model.safetensors"


DAMAGE = {
    "missing_point": lambda run: shutil.rmtree(_point(run, 2).parent),
    "truncated_point": lambda run: _point(run, 2).write_bytes(_point(run, 2).read_bytes()[:100]),
    "corrupt_metrics": lambda run: (run / "path_metrics.json").write_text('{"points": [1, 2'),
    "metrics_not_a_mapping": lambda run: (run / "path_metrics.json").write_text("[1, 2, 3]"),
    "odd_layer_groups": lambda run: (run / "layer_groups.json").write_text('"stages"'),
    "odd_endpoints": lambda run: (run / "endpoints.json").write_text("[]"),
    "nan_point": lambda run: _nan_point(_point(run, 2)),
}


def _nan_point(file: Path) -> None:
    import safetensors.torch

    state = safetensors.torch.load_file(str(file))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    safetensors.torch.save_file(state, str(file))


def _evaluate_argv(name: str):
    return lambda w: ["evaluate", _damaged_run(w, name, DAMAGE[name])]


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
     ["max_ticks=True", "not a boolean"]),
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
     ["unknown method 'bezierr'", "m2m", "m2o"]),
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
    *[(f"evaluate-{name}", _evaluate_argv(name), []) for name in DAMAGE],
]  # fmt: skip

EVALUATE_WORDS = {
    "missing_point": ["points[2]", "missing"],
    "truncated_point": ["points[2]", "not a readable safetensors"],
    "corrupt_metrics": ["path_metrics.json", "not valid JSON"],
    "metrics_not_a_mapping": ["path_metrics.json", "expected a JSON dict"],
    "odd_layer_groups": ["layer_groups.json"],
    "odd_endpoints": ["endpoints.json"],
    "nan_point": ["points[2]", "non-finite"],
}


def _yaml(w: Path, content: str | bytes) -> Path:
    f = w / f"recipe_{abs(hash(content))}.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def _run(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(case, w, capsys):
    name, argv, words = case
    args = argv(w)
    before = sorted(p.relative_to(w).as_posix() for p in w.rglob("*"))
    rc = _run(args)
    err = capsys.readouterr().err
    if name.startswith("evaluate-"):
        words = EVALUATE_WORDS[name.removeprefix("evaluate-")]
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 12, err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    after = sorted(p.relative_to(w).as_posix() for p in w.rglob("*"))
    assert after == before
    assert not os.path.exists(w / "o")


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
