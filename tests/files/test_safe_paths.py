"""Names read from a run directory or a published path never reach outside it (hf_llpf.files.safe_paths).

A hostile run directory is built here from a real fake run (``hub_fixtures.make_run_dir``) by editing its
``path_metrics.json`` or planting links, as an attacker who publishes a path would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hub_fixtures import make_run_dir

from hf_llpf.errors import RunDirectoryError
from hf_llpf.files.safe_paths import check_relative_name, resolve_inside, walk_files
from hf_llpf.hub import HubPath, export_point, publishable_files
from hf_llpf.run import RunPath as LLPFPath

torch.set_num_threads(1)


@pytest.fixture()
def run(tmp_path):
    return make_run_dir(tmp_path / "run", kind="timm")


@pytest.fixture()
def secret(tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text("hf_secret_token_never_copied")
    return home


def _set_point(run: Path, index: int, name: object) -> None:
    metrics = json.loads((run / "path_metrics.json").read_text())
    metrics["points"][index]["point"] = name
    (run / "path_metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize(
    "name", ["../../../..", "points/../../x", "/etc", "points/./t_000005", "", "C:/x", "points\\..\\x", 7, None]
)
def test_hostile_point_names_are_refused_with_the_name(name):
    with pytest.raises(RunDirectoryError) as err:
        check_relative_name(name, field="points[2].point")
    assert "points[2].point" in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["../../../..", None])
def test_export_of_a_hostile_point_copies_nothing(run, secret, tmp_path, name):
    # The point name climbs to the folder that holds the user's token (or is absolute).
    _set_point(run, 2, name if name is not None else str(secret))
    out = tmp_path / "out"
    with pytest.raises(RunDirectoryError, match=r"points\[2\]\.point"):
        export_point(run, point="mid", out_dir=out)
    assert not out.exists()
    assert not any("token" in p.name for p in tmp_path.rglob("*") if secret not in p.parents)


def test_path_reader_refuses_a_hostile_run_directory_when_opened(run):
    _set_point(run, 4, "../../../..")
    with pytest.raises(RunDirectoryError, match=r"points\[4\]\.point='\.\./\.\./\.\./\.\.'"):
        LLPFPath(run)


def test_a_link_out_of_a_point_is_neither_exported_nor_pushed(run, secret, tmp_path):
    os.symlink(secret / "token", run / "points" / "t_000010" / "tokenizer.json")
    with pytest.raises(RunDirectoryError, match="tokenizer.json.*outside"):
        export_point(run, point="mid", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RunDirectoryError, match="tokenizer.json.*outside"):
        publishable_files(run)


def test_a_linked_plot_or_folder_is_not_published(run, secret):
    os.symlink(secret, run / "plots" / "more")
    with pytest.raises(RunDirectoryError, match="plots/more.*outside"):
        publishable_files(run)


def test_links_inside_the_run_directory_are_published_as_files(run):
    os.symlink(run / "plots" / "loss.png", run / "plots" / "copy.png")
    files = publishable_files(run)
    assert "plots/copy.png" in files and "plots/loss.png" in files
    assert all(not f.startswith("checkpoint") for f in files)


def test_a_point_folder_that_is_a_link_out_is_refused(run, secret):
    os.symlink(secret, run / "points" / "evil")
    _set_point(run, 1, "points/evil")
    path = LLPFPath(run)
    with pytest.raises(RunDirectoryError, match="points/evil.*outside"):
        path.point_dir(1)
    with pytest.raises(RunDirectoryError, match="outside"):
        path.state_dict_at(1)


def test_hub_snapshot_links_into_the_blob_store_are_allowed_and_nothing_else(tmp_path, secret):
    # The layout huggingface_hub writes: snapshot files are links to ../../blobs/<hash>.
    repo = tmp_path / "models--org--path"
    snap, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    (snap / "points" / "t_000000").mkdir(parents=True)
    blobs.mkdir()
    (blobs / "123").write_bytes(b"weights")
    os.symlink(blobs / "123", snap / "points" / "t_000000" / "model.safetensors")
    os.symlink(secret / "token", snap / "points" / "t_000000" / "config.json")
    folder = resolve_inside(snap, "points/t_000000", field="p", allowed_root=repo)
    with pytest.raises(RunDirectoryError, match="config.json.*outside"):
        list(walk_files(folder, allowed_root=repo))
    os.unlink(snap / "points" / "t_000000" / "config.json")
    assert [p.name for p in walk_files(folder, allowed_root=repo)] == ["model.safetensors"]
    fence = HubPath._fence(type("P", (), {"root": snap})())
    assert fence == repo
