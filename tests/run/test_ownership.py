"""Nothing a user owns is ever deleted or written: links planted in a run directory, a git repository as --out,
--resume without a checkpoint, a finished run whose checkpoint was removed, compare --out (issue 32, items 1-4
and 6). Each test builds its hostile folder, runs the CLI in-process and checks the whole tree is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from hf_llpf.cli import main
from hf_llpf.run.lock import is_run_directory
from hf_llpf.run.ownership import survey

torch.set_num_threads(1)

FAST = {"step_r": 0.25, "min_iters": 1, "max_iters": 2, "checkpoint_every": 1, "arrival_tol": 0.05}
FAST["loss_ceiling"] = None  # run-directory mechanics: plain LLPF
FLAGS = [f"{k}={'null' if v is None else v}" for k, v in FAST.items()]


def snapshot(root) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): a link's target, a folder, or a file's sha256 and mode."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                found[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                found[rel] = ("dir",)
            else:
                with open(p, "rb") as f:
                    found[rel] = ("file", hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mode)
    return found


@pytest.fixture(scope="module")
def finished(small_cnn_pair, tmp_path_factory):
    """A finished run of the two small endpoints (read-only: tests copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    a, b = map(str, small_cnn_pair)
    assert main(["connect", a, b, "--data", "digits", "--out", str(run), "--no-progress", *FLAGS]) == 0
    return run


def _connect(pair, out, *extra):
    a, b = map(str, pair)
    return main(["connect", a, b, "--data", "digits", "--out", str(out), "--no-progress", *FLAGS, *extra])


def _git_repo(root):
    """A user's experiment folder: a git repository with a README and the recipe the command reads."""
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "README.md").write_text("# my experiment\n")
    (root / "llpf_config.yaml").write_text("step_r: 0.25\nmin_iters: 1\nmax_iters: 2\n")
    return root


# --- 1. no writer follows a link ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "command"),
    [
        ("baselines/linear", ["evaluate", "{run}", "--baselines", "linear", "--points", "3", "--train-subset", "32"]),
        ("baselines", ["evaluate", "{run}", "--baselines", "linear", "--points", "3", "--train-subset", "32"]),
        ("plots", ["evaluate", "{run}", "--train-subset", "32", "--no-progress"]),
        ("points", ["connect", "{a}", "{b}", "--data", "digits", "--out", "{run}", "--resume", *FLAGS]),
    ],
    ids=["baselines-linear", "baselines", "plots", "points"],
)
def test_a_link_planted_in_a_run_directory_is_refused(finished, small_cnn_pair, tmp_path, capsys, link, command):
    victim = tmp_path / "victim"
    shutil.copytree(finished, victim)
    (victim / "notes.txt").write_text("my notes")
    crafted = tmp_path / "crafted"
    shutil.copytree(finished, crafted)
    target = crafted / link
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(victim, target.parent), target)
    before = snapshot(tmp_path)
    a, b = map(str, small_cnn_pair)
    argv = [x.format(run=crafted, a=a, b=b) for x in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and link in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_link_anywhere_in_a_run_directory(finished, small_cnn_pair, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    os.symlink(victim, run / "points" / "t_000099")
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, run, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"symbolic links, never followed: points/t_000099 -> {victim}" in err and "it would delete:" in err
    assert snapshot(tmp_path) == before


# --- 2. --overwrite deletes only what this tool wrote -------------------------------------------------------


def test_overwrite_refuses_a_git_repository_and_lists_what_is_foreign(small_cnn_pair, tmp_path, capsys):
    repo = _git_repo(tmp_path / "myexp")
    (repo / ".ssh").mkdir()
    (repo / ".ssh" / "id_ed25519").write_text("secret")
    assert not is_run_directory(repo)  # dot-names are not the layout
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, repo, "--recipe", str(repo / "llpf_config.yaml"), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite it" in err and "which this command reads" in err
    assert "not a run directory of hf_llpf" in err
    assert "did not write there: .git/, .ssh/" in err and "it would delete: README.md, llpf_config.yaml" in err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_run_holding_a_users_file(finished, small_cnn_pair, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("my notes")
    (run / "points" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, run, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "did not write there: notes.txt, points/keep.txt" in err
    assert "it would delete: .hf_llpf-run, checkpoint/, endpoints.json" in err and "points/" in err
    assert snapshot(tmp_path) == before
    assert survey(finished).foreign == [] and is_run_directory(finished)


def test_overwrite_never_deletes_the_recipe_it_reads(finished, small_cnn_pair, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)  # a run directory of this tool, nothing foreign: only the recipe is in the way
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, run, "--recipe", str(run / "llpf_config.yaml"), "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"{run / 'llpf_config.yaml'}" in err and "which this command reads" in err
    assert snapshot(tmp_path) == before


def test_repeats_into_a_git_repository_are_refused(small_cnn_pair, tmp_path, capsys):
    repo = _git_repo(tmp_path / "myexp")
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, repo, "--repeats", "2") == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert _connect(small_cnn_pair, repo, "--repeats", "2", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not a repeats folder of hf_llpf" in err and "did not write there: .git/, llpf_config.yaml" in err
    assert "it would delete: README.md" in err
    assert snapshot(tmp_path) == before


# --- 3. --resume never deletes ------------------------------------------------------------------------------


def test_resume_without_a_checkpoint_refuses_a_folder_that_is_not_a_run(small_cnn_pair, tmp_path, capsys):
    repo = _git_repo(tmp_path / "myexp")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("step_r: 0.25\n")
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, repo, "--recipe", str(recipe), "--resume") == 2
    err = capsys.readouterr().err
    assert "refusing to resume into it" in err and "not a run directory of hf_llpf" in err
    assert "did not write there: .git/" in err and "would delete" not in err
    assert snapshot(tmp_path) == before


def test_resume_without_a_checkpoint_continues_only_an_exact_run_directory(small_cnn_pair, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()  # a run killed before its first checkpoint: its marker and settings only
    (run / ".hf_llpf-run").write_text(json.dumps({"hf_llpf": "0", "kind": "run"}))
    (run / "llpf_config.yaml").write_text("seed: 0\n")
    assert _connect(small_cnn_pair, run, "--resume") == 0
    assert (run / "checkpoint" / "state.json").is_file()
    # The same with a user's file in it: refused, nothing changed.
    other = tmp_path / "other"
    other.mkdir()
    (other / ".hf_llpf-run").write_text("{}")
    (other / "notes.txt").write_text("mine")
    before = snapshot(other)
    capsys.readouterr()
    assert _connect(small_cnn_pair, other, "--resume") == 2
    assert "did not write there: notes.txt" in capsys.readouterr().err
    assert snapshot(other) == before
    # An older layout without the marker: nothing foreign, but not a run this version started.
    (other / "notes.txt").unlink()
    (other / ".hf_llpf-run").unlink()
    (other / "llpf_config.yaml").write_text("seed: 0\n")
    before = snapshot(other)
    assert _connect(small_cnn_pair, other, "--resume") == 2
    assert "no checkpoint/ and no .hf_llpf-run marker" in capsys.readouterr().err
    assert snapshot(other) == before


# --- 4. --resume of a finished run whose checkpoint was removed ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["max_ticks=2"], "the settings differ from its llpf_config.yaml: m2m.max_ticks was 2000, now 2)"),
        ([], "the settings are those of its llpf_config.yaml; nothing to resume"),
    ],
    ids=["other-settings", "same-settings"],
)
def test_resume_of_a_finished_run_without_its_checkpoint_is_refused(
    finished, small_cnn_pair, tmp_path, capsys, extra, expected
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "checkpoint")
    (run / "notes.txt").write_text("my notes")
    points = len(json.loads((run / "path_metrics.json").read_text())["points"])
    before = snapshot(tmp_path)
    assert _connect(small_cnn_pair, run, "--resume", *extra) == 2
    err = capsys.readouterr().err
    assert f"it holds a finished path of {points} points and no checkpoint/" in err and expected in err
    assert "Pass --overwrite to build it again" in err
    assert snapshot(tmp_path) == before


# --- 6. compare --out follows the same exist policy ---------------------------------------------------------


def _compare(pair, out, *extra):
    a, b = map(str, pair)
    return main(["compare", a, b, "--data", "digits", "--methods", "linear", "--points", "3", "--train-subset", "32",
                 "--out", str(out), *extra])  # fmt: skip


@pytest.fixture()
def no_loading(monkeypatch):
    """Fails the test if an endpoint or data is loaded: the --out problems come first."""

    def fail(*a, **k):
        raise AssertionError("loaded before --out was checked")

    monkeypatch.setattr("hf_llpf.models.endpoints.load_endpoint", fail)
    monkeypatch.setattr("hf_llpf.run.inputs.prepare_data", fail)


def test_compare_refuses_a_folder_that_is_not_its_own(small_cnn_pair, tmp_path, capsys, no_loading):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "comparison.md").write_text("my own table")
    before = snapshot(tmp_path)
    assert _compare(small_cnn_pair, proj) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty; pass --overwrite to replace it" in err and "--resume" not in err
    assert _compare(small_cnn_pair, proj, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not a comparison folder of hf_llpf" in err and "it would delete: comparison.md" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["endpoint", "inside-endpoint", "recipe"])
def test_compare_never_writes_into_what_it_reads(small_cnn_pair, tmp_path, capsys, no_loading, where):
    pair = [tmp_path / "A", tmp_path / "B"]
    for src, dst in zip(small_cnn_pair, pair, strict=True):
        shutil.copytree(src, dst)
    recipe = tmp_path / "cmp" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("seed: 0\n")
    out = {"endpoint": pair[0], "inside-endpoint": pair[0] / "cmp", "recipe": recipe.parent}[where]
    extra = ["--recipe", str(recipe)] if where == "recipe" else []
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"]):
        assert _compare(pair, out, *extra, *flags) == 2
        err = capsys.readouterr().err
        assert "which this command reads" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_compare_overwrites_only_its_own_folder(small_cnn_pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _compare(small_cnn_pair, out) == 0
    assert json.loads((out / ".hf_llpf-run").read_text())["kind"] == "comparison"
    assert _compare(small_cnn_pair, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".hf_llpf-run", "comparison.json", "comparison.md", "comparison.png", "linear"
    ]  # fmt: skip
    (out / "linear" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _compare(small_cnn_pair, out, "--overwrite") == 2
    assert "did not write there: linear/notes.txt" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_a_folder_is_ours_only_by_its_marker_or_an_exact_older_layout(tmp_path):
    from hf_llpf.run.ownership import is_ours

    old = tmp_path / "old"
    (old / "points" / "t_000000").mkdir(parents=True)
    (old / "llpf_config.yaml").write_text("seed: 0\n")
    (old / "path_metrics.json").write_text("{}")
    assert is_run_directory(old) and survey(old).foreign == []
    for intruder in (".git", ".ssh", "notes.txt"):
        folder = tmp_path / intruder.strip(".")
        shutil.copytree(old, folder)
        (folder / intruder).mkdir()
        assert not is_run_directory(folder), intruder
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "marker").write_text("{}")
    os.symlink(tmp_path / "marker", linked / ".hf_llpf-run")  # a link is no marker
    assert not is_run_directory(linked)
    cmp_folder = tmp_path / "cmp"
    cmp_folder.mkdir()
    (cmp_folder / ".hf_llpf-run").write_text(json.dumps({"hf_llpf": "0", "kind": "comparison"}))
    assert is_ours(cmp_folder, "comparison") and not is_run_directory(cmp_folder)
