"""``push`` into a repo holding files it did not publish, and the load hint of a pull request (issue 32, items 5, 10).

``-m hub``: the pushes go to the Hub stand-in (``hub_standin.py``: git repos behind the Hub's write API) through
the real ``HfApi``, in this process (huggingface_hub's offline switch is turned off for the test); no read
server is needed. Every repo is built in the test: another's files committed directly into its git repo.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hub_fixtures import make_run_dir, png_bytes, tree_digest

from hf_llpf.cli import main

pytestmark = pytest.mark.hub

TOKEN = "hf_standinSECRETtoken0123456789abcdef"
# Another's files: an adapter, ONNX weights, a plot, a note among the points, and a root model of their own.
OTHERS = {
    "adapter/adapter_model.safetensors": b"adapter weights " * 64,
    "onnx/model.safetensors": b"onnx export " * 64,
    "plots/mine.png": png_bytes(seed=5),
    "points/keep.txt": b"my notes on these points\n" * 10,
    "config.json": b'{"architectures": ["MyOwnModel"], "note": "mine"}\n' + b" " * 200,
    "model.safetensors": b"my own root weights " * 64,
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _state(repo: Path) -> str:
    """Every ref of the repo and its commit: a push that changes anything changes this."""
    return _git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def _files(repo: Path, rev: str = "main") -> set[str]:
    return set(_git(repo, "ls-tree", "-r", "--name-only", rev).splitlines())


def _blob(repo: Path, rev: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in (yields ``(standin, mirrors)``) and one run directory, its files hashed."""
    from hub_standin import HubStandin

    base = tmp_path_factory.mktemp("foreign")
    mirrors = base / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    run = make_run_dir(base / "run", kind="timm")
    with HubStandin(mirrors, token=TOKEN) as standin:
        yield standin, mirrors, run


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub as online in this process (the suite runs offline), with the stand-in's token."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")


def _push(standin, run: Path, repo_id: str, *extra: str, capsys) -> tuple[int, str, str]:
    import huggingface_hub.constants

    args = ["push", str(run), repo_id, "--token", TOKEN, "--license", "mit", "--files-per-commit", "200", *extra]
    old = huggingface_hub.constants.ENDPOINT
    huggingface_hub.constants.ENDPOINT = standin.url  # what HF_ENDPOINT sets; push_path reads it via HfApi
    try:
        rc = main(args)
    finally:
        huggingface_hub.constants.ENDPOINT = old
    out = capsys.readouterr()
    return rc, out.out, out.err


def _seed(mirrors: Path, repo_id: str, files: dict[str, bytes], tmp: Path) -> Path:
    from hub_standin import seed_repo

    folder = tmp / repo_id.replace("/", "_")
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    seed_repo(mirrors, repo_id, folder)
    return mirrors / "models" / repo_id


def test_push_into_a_repo_of_other_files_refuses_listing_them_and_uploads_nothing(hub, online, tmp_path, capsys):
    standin, mirrors, run = hub
    repo = _seed(mirrors, "user/mixed", OTHERS, tmp_path)
    before, local = _state(repo), tree_digest(run)
    rc, out, err = _push(standin, run, "user/mixed", capsys=capsys)
    assert rc == 2 and "Traceback" not in err and out == ""
    assert "refused, nothing was uploaded" in err and "--delete-other" in err and "--delete-patterns" in err
    deleted, replaced = err.split("it would delete ")[1].split("; and replace ")
    for rel in ("adapter/adapter_model.safetensors", "onnx/model.safetensors", "plots/mine.png", "points/keep.txt"):
        assert rel in deleted, rel
    assert "config.json" in replaced and "model.safetensors" in replaced
    assert _state(repo) == before and tree_digest(run) == local  # no commit, no branch, no tag; README unchanged
    assert not [r for r in standin.requests if r[0] == "POST" and "user/mixed" in r[1]]  # no preupload, no commit
    # A new branch starts from main and holds the same files: checked alike, and not created.
    rc, _, err = _push(standin, run, "user/mixed", "--revision", "dev", capsys=capsys)
    assert rc == 2 and "user/mixed@dev (a new branch from main) refused" in err and "points/keep.txt" in err
    assert _state(repo) == before


def test_delete_patterns_allow_only_what_they_match(hub, online, tmp_path, capsys):
    standin, mirrors, run = hub
    repo = _seed(mirrors, "user/partly", OTHERS, tmp_path)
    before = _state(repo)
    rc, _, err = _push(standin, run, "user/partly", "--delete-patterns", "adapter/*", capsys=capsys)
    assert rc == 2 and "adapter/" not in err.split("refused")[1] and "onnx/model.safetensors" in err
    assert _state(repo) == before
    # Keeping the others out of the push (its root model and the points' notes) leaves them as they are.
    allow = ["--delete-patterns", "adapter/*", "--delete-patterns", "onnx/*", "--delete-patterns", "plots/*"]
    keep = ["--exclude", "points/keep.txt", "--exclude", "model.safetensors", "--exclude", "config.json"]
    rc, out, err = _push(standin, run, "user/partly", *allow, *keep, "--root-point", "none", capsys=capsys)
    assert rc == 0, err
    files = _files(repo)
    assert {"points/keep.txt", "config.json", "model.safetensors"} <= files
    assert not any(f.startswith(("adapter/", "onnx/")) for f in files) and "plots/mine.png" not in files
    assert _blob(repo, "main", "config.json") == OTHERS["config.json"]
    for rel in ("adapter/adapter_model.safetensors", "onnx/model.safetensors", "plots/mine.png"):
        assert f"deleted: {rel} (not published by hf_llpf; allowed)" in out


def test_delete_other_deletes_and_replaces_naming_every_file(hub, online, tmp_path, capsys):
    standin, mirrors, run = hub
    repo = _seed(mirrors, "user/replace", OTHERS, tmp_path)
    rc, out, err = _push(standin, run, "user/replace", "--delete-other", capsys=capsys)
    assert rc == 0, err
    files = _files(repo)
    gone = ("adapter/adapter_model.safetensors", "onnx/model.safetensors", "plots/mine.png", "points/keep.txt")
    assert not set(gone) & files and "points/t_000010/model.safetensors" in files
    for rel in gone:
        assert f"deleted: {rel} (not published by hf_llpf; allowed)" in out
    for rel in ("config.json", "model.safetensors"):
        assert f"replaced: {rel} (not published by hf_llpf; allowed)" in out
    assert _blob(repo, "main", "model.safetensors") == (run / "points" / "t_000010" / "model.safetensors").read_bytes()


def test_a_repo_holding_only_what_this_tool_published_is_updated_without_a_flag(hub, online, tmp_path, capsys):
    standin, mirrors, run = hub
    rc, out, err = _push(standin, run, "llpf/own", capsys=capsys)
    assert rc == 0, err
    repo = mirrors / "models" / "llpf/own"
    # Fewer points and another root: the earlier push's points and root weights are replaced or deleted.
    rc, out, err = _push(standin, run, "llpf/own", "--every", "4", "--root-point", "0", capsys=capsys)
    assert rc == 0, err
    assert "deleted: points/t_000010/model.safetensors" in out and "not published by hf_llpf" not in out
    assert {f.split("/")[1] for f in _files(repo) if f.startswith("points/")} == {"t_000000", "t_000020"}
    # A file of another's added since, and a root config someone edited: refused, nothing uploaded.
    _git(repo, "checkout", "-q", "main")
    (repo / "points" / "keep.txt").write_text("mine\n" * 40)
    (repo / "config.json").write_text((repo / "config.json").read_text() + " ")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "my files")
    before = _state(repo)
    rc, out, err = _push(standin, run, "llpf/own", capsys=capsys)
    assert rc == 2 and "delete 1: points/keep.txt" in err and "replace 1: config.json" in err
    assert _state(repo) == before


def test_a_pull_request_prints_the_load_hint_of_its_revision(hub, online, tmp_path, capsys):
    standin, mirrors, run = hub
    rc, _, err = _push(standin, run, "llpf/pr", capsys=capsys)
    assert rc == 0, err
    rc, out, err = _push(standin, run, "llpf/pr", "--create-pr", "--root-point", "best", capsys=capsys)
    assert rc == 0, err
    repo = mirrors / "models" / "llpf/pr"
    assert _git(repo, "rev-parse", "refs/pr/1")  # the pull request exists
    assert 'load it with: hf_llpf.load_path("llpf/pr@refs/pr/1")' in out and "@main" not in out
    assert out.splitlines()[0].startswith("pushed: pull request ") and "/llpf/pr/discussions/1" in out


def test_point_branches_push_with_progress_and_the_hub_library_repeats_folded(hub, online, capsys):
    standin, mirrors, run = hub
    branches = [f"t_0000{t:02d}" for t in (0, 5, 10, 15, 20)]
    folded = (
        "hf-llpf: huggingface_hub (5 times): No files have been modified since last commit. Skipping to prevent "
        "empty commit."
    )
    rc, _, err = _push(standin, run, "llpf/branches", "--point-revisions", capsys=capsys)
    assert rc == 0, err
    assert err.splitlines() == [
        "hf-llpf: llpf/branches@main: 1 commit; next, 5 point branches",
        *(f"hf-llpf: llpf/branches: point branch {j}/5 {b}: 1 commit" for j, b in enumerate(branches, 1)),
    ]
    # Again: nothing changes; huggingface_hub's message for each empty commit is said once, with its count.
    rc, _, err = _push(standin, run, "llpf/branches", "--point-revisions", capsys=capsys)
    assert rc == 0, err
    assert err.splitlines() == [
        "hf-llpf: llpf/branches@main: unchanged, no commit; next, 5 point branches",
        *(f"hf-llpf: llpf/branches: point branch {j}/5 {b}: unchanged, no commit" for j, b in enumerate(branches, 1)),
        folded,
    ]
    # -q: no progress; the library's warning (once) stays.
    rc, _, err = _push(standin, run, "llpf/branches", "--point-revisions", "-q", capsys=capsys)
    assert rc == 0 and err.splitlines() == [folded]
