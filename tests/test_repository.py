"""The repository's own files: what the Makefile and the benchmarks generate stays out of git (``.gitignore``)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ignored(relative: str) -> bool:
    """Whether git ignores ``relative`` (a path that need not exist) under the repository's ``.gitignore``."""
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", relative], cwd=ROOT, check=False)
    assert done.returncode in (0, 1), f"git check-ignore {relative}: exit {done.returncode}"
    return done.returncode == 0


def _generated() -> list[str]:
    """A file inside every folder the Makefile or the benchmarks create in the checkout."""
    from benchmarks import harness

    makefile = (ROOT / "Makefile").read_text()
    venvs = re.findall(r"-m venv (\S+)", makefile)  # `$(VENV)` (make install) and `.olah` (make olah)
    assert ".olah" in venvs and "$(VENV)" in venvs, venvs
    venv = re.search(r"^VENV \?= (\S+)$", makefile, re.M).group(1)
    demo = re.search(r"demo --out (\S+)", makefile).group(1)  # make demo's run directory
    folders = [venv if v == "$(VENV)" else v for v in venvs]
    folders += [demo, harness.CACHE.relative_to(ROOT).as_posix(), "hf_llpf.egg-info", ".pytest_cache", ".ruff_cache"]
    return [f"{folder}/some_file" for folder in folders]


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_what_the_makefile_and_benchmarks_generate_is_ignored():
    generated = _generated()
    assert {p.split("/")[0] for p in generated} >= {".olah", ".venv", "runs", ".bench_cache"}
    assert [p for p in generated if not _ignored(p)] == []
    # and the check can fail: the sources are not ignored
    assert not _ignored("hf_llpf/api.py") and not _ignored("tests/README.md")


def _listed_in_readme() -> set[str]:
    """The test files ``tests/README.md`` lists in its tree: a line ``  folder/  test_a.py test_b.py`` (and the more
    indented lines under it) lists ``folder/test_a.py`` ...; any other line of the tree lists files of ``tests/``."""
    text = (ROOT / "tests" / "README.md").read_text()
    tree = text.split("```\ntests/\n", 1)[1].split("```", 1)[0]
    listed, folder = set(), ""
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if indent <= 2:  # a line of tests/ itself, or a folder's first line
            folder = words[0] if words and words[0].endswith("/") else ""
        listed |= {folder + w.strip(",") for w in words if re.fullmatch(r"test_\w+\.py,?", w)}
    return listed


def test_readme_lists_every_test_file():
    """Every ``tests/**/test_*.py`` is listed in tests/README.md's tree (under its folder), and nothing else is."""
    actual = {p.relative_to(ROOT / "tests").as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    listed = _listed_in_readme()
    assert sorted(actual - listed) == [], "test files missing from tests/README.md's tree"
    assert sorted(listed - actual) == [], "tests/README.md lists test files that do not exist"
    assert "test_repository.py" in listed and "sharding/test_sharding_engine.py" in listed  # the parser reads both
