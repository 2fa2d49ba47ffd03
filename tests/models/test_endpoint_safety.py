"""What an endpoint or a point folder may make the tool read or republish (issue 32, items 11-13).

- ``auto_map`` / ``custom_pipelines`` (pointers to another repo's code) in an endpoint's configs are removed from
  every file the tool writes: points, ``assets/``, the published repo (root and points) and exports;
- a point folder whose shard index names files behind a link out of the folder is refused before any file is read;
- a timm ``config.json`` naming a file to load (``checkpoint_path``, ``pretrained_cfg`` file entries) is refused
  before timm sees it.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from hub_fixtures import make_run_dir, save_endpoint_folder, tree_digest
from text_fixtures import bert_endpoints, write_reviews

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.errors import RunDirectoryError, UnsafeEndpointError
from hf_llpf.hub.export import export_point
from hf_llpf.hub.push import published_files
from hf_llpf.models.endpoints import create_model, load_endpoint
from hf_llpf.models.remote_code import CONFIG_FILES
from hf_llpf.run import RunPath as LLPFPath

torch.set_num_threads(1)

AUTO_MAP = {"AutoModel": "evil/code--modeling_evil.EvilModel", "AutoConfig": "evil/code--configuration_evil.Cfg"}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["evil/code--tokenization_evil.EvilTokenizer", None]}


@pytest.fixture(autouse=True)
def _process_state():
    """Warnings go through accelerate's logger, which needs the process state."""
    from accelerate import PartialState

    PartialState()


class _Opened:
    """Records every file opened through ``open``, ``torch.load``, safetensors and timm's checkpoint loader."""

    def __init__(self, monkeypatch):
        import safetensors
        import safetensors.torch
        import timm.models._factory

        self.paths: list[str] = []
        real_open, real_load_file, real_safe_open = builtins.open, safetensors.torch.load_file, safetensors.safe_open

        def spy_open(file, *args, **kwargs):
            self.paths.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
            return real_open(file, *args, **kwargs)

        def spy_load_file(file, *args, **kwargs):
            self.paths.append(os.path.realpath(file))
            return real_load_file(file, *args, **kwargs)

        def spy_safe_open(file, *args, **kwargs):
            self.paths.append(os.path.realpath(file))
            return real_safe_open(file, *args, **kwargs)

        def refuse(file, *args, **kwargs):
            self.paths.append(os.path.realpath(file))
            raise AssertionError(f"loaded {file}")

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(safetensors.torch, "load_file", spy_load_file)
        monkeypatch.setattr(safetensors, "safe_open", spy_safe_open)
        monkeypatch.setattr(torch, "load", refuse)
        monkeypatch.setattr(timm.models._factory, "load_checkpoint", refuse)

    def under(self, folder: Path) -> list[str]:
        root = os.path.realpath(folder)
        return [p for p in self.paths if p == root or p.startswith(root + os.sep)]


# ----------------------------------------------------------------------------------------------------------------
# Item 13: a timm config.json naming a file to load
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_pair")
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        save_endpoint_folder(create_model("small_cnn", num_classes=10).eval(), root / name)
    return root


def _hostile_timm(timm_pair: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    folder = tmp_path / "B"
    shutil.copytree(timm_pair / "B", folder)
    evil = tmp_path / "outside" / "evil.pth"
    evil.parent.mkdir()
    evil.write_bytes(b"\x80\x02 a pickle that must never be loaded" * 8)
    config = json.loads((folder / "config.json").read_text())
    edit(config, str(evil))
    (folder / "config.json").write_text(json.dumps(config))
    return folder, evil


def test_a_timm_config_with_checkpoint_path_is_refused_and_the_file_never_opened(
    timm_pair, tmp_path, monkeypatch, capsys
):
    folder, evil = _hostile_timm(timm_pair, tmp_path, lambda c, f: c["model_args"].update(checkpoint_path=f))
    opened = _Opened(monkeypatch)
    out = tmp_path / "run"
    rc = main(["connect", str(timm_pair / "A"), str(folder), "--out", str(out), "--data", "digits", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(folder / "config.json") in err and "model_args.checkpoint_path" in err and str(evil) in err
    assert "torch.load, a pickle" in err and "only from the folder's safetensors" in err
    assert opened.under(evil.parent) == [] and not out.exists()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c, f: c["model_args"].update(pretrained_cfg_overlay={"file": f}), "model_args.pretrained_cfg_overlay"),
        (lambda c, f: c["model_args"].update(pretrained_cfg={"file": f}), "model_args.pretrained_cfg"),
        (lambda c, f: c["model_args"].update(cache_dir=os.path.dirname(f)), "model_args.cache_dir"),
        (lambda c, f: c["pretrained_cfg"].update(file=f), "pretrained_cfg.file"),
    ],
)
def test_other_load_from_path_entries_are_refused(timm_pair, tmp_path, monkeypatch, edit, key):
    folder, evil = _hostile_timm(timm_pair, tmp_path, edit)
    opened = _Opened(monkeypatch)
    with pytest.raises(UnsafeEndpointError, match=key.replace(".", r"\.")) as info:
        load_endpoint(folder)
    assert str(folder / "config.json") in str(info.value)
    assert opened.under(evil.parent) == []


def test_model_args_given_by_the_user_cannot_load_a_checkpoint(tmp_path, monkeypatch):
    opened = _Opened(monkeypatch)
    with pytest.raises(UnsafeEndpointError, match=r"model_args: model_args\.checkpoint_path"):
        create_model("small_cnn", checkpoint_path=str(tmp_path / "x.pth"))
    assert opened.under(tmp_path) == []


def test_a_clean_timm_folder_still_loads(timm_pair):
    assert load_endpoint(timm_pair / "A").arch["model_args"] == {"num_classes": 10}


# ----------------------------------------------------------------------------------------------------------------
# Item 12: a sharded point whose index names files behind a link out of the point folder
# ----------------------------------------------------------------------------------------------------------------


def _plant_sharded_link(run: Path, outside: Path, *, target: Path | None = None) -> None:
    """Point 1 becomes a sharded point whose only shard lies in ``sub/``, a link to ``target`` (default: outside)."""
    folder = run / "points" / "t_000005"
    weights = folder / "model.safetensors"
    target = target or outside
    target.mkdir(exist_ok=True)
    shard = "model-00001-of-00001.safetensors"
    shutil.move(weights, target / shard)
    from safetensors import safe_open

    with safe_open(str(target / shard), framework="pt") as f:
        names = list(f.keys())
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, f"sub/{shard}")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "sub").symlink_to(os.path.relpath(target, folder))


def test_a_shard_behind_a_link_out_of_the_run_is_never_read_by_evaluate(tmp_path, monkeypatch, capsys):
    run = make_run_dir(tmp_path / "run", kind="timm")
    outside = tmp_path / "victim"
    _plant_sharded_link(run, outside)
    before, victim = tree_digest(run), tree_digest(outside)
    opened = _Opened(monkeypatch)
    rc = main(["evaluate", str(run), "--train-subset", "64", "--linear-points", "3", "--continuity", "0",
               "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "'sub'" in err and os.path.realpath(outside) in err and "outside the directory" in err
    assert opened.under(outside) == []
    assert tree_digest(run) == before and tree_digest(outside) == victim


def test_every_reader_of_a_point_refuses_a_link_out_of_its_folder(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run", kind="timm")
    # A link to another folder of the same run directory is refused too: a point's files are its folder's.
    _plant_sharded_link(run, tmp_path / "unused", target=run / "points" / "t_000010" / "moved")
    path = LLPFPath(run)
    opened = _Opened(monkeypatch)
    for read in (path.state_dict_at, path.model_at, path.endpoint_at, path.point_weight_files):
        with pytest.raises(RunDirectoryError, match=r"file 'sub' .* is refused: it is a link"):
            read(1)
    with pytest.raises(RunDirectoryError, match="is refused"):
        load_endpoint(run / "points" / "t_000005", allowed_root=run / "points" / "t_000005")
    assert opened.under(run / "points" / "t_000010" / "moved") == []
    assert len(path.state_dict_at(2)) > 0  # the other points are read as before


def test_a_sharded_point_inside_its_folder_still_loads(tmp_path):
    run = make_run_dir(tmp_path / "run", kind="timm")
    expected = LLPFPath(run).state_dict_at(1)
    folder = run / "points" / "t_000005"
    _plant_sharded_link(run, tmp_path / "unused", target=folder / "real_sub")
    (folder / "sub").unlink()
    (folder / "real_sub").rename(folder / "sub")  # the shard now lies in a real sub-folder of the point
    state = LLPFPath(run).state_dict_at(1)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


# ----------------------------------------------------------------------------------------------------------------
# Item 11: auto_map in an endpoint's config.json and tokenizer_config.json
# ----------------------------------------------------------------------------------------------------------------


def _add_auto_map(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map=AUTO_MAP, custom_pipelines={"evil": {"impl": "evil/code--pipe.Evil"}})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = TOKENIZER_AUTO_MAP
    (folder / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))


def _carriers(files: dict[str, bytes]) -> list[str]:
    """The config files (of :data:`CONFIG_FILES`) that still name remote code."""
    configs = {rel: data for rel, data in files.items() if rel.rsplit("/", 1)[-1] in CONFIG_FILES}
    return sorted(rel for rel, data in configs.items() if b"auto_map" in data or b"custom_pipelines" in data)


@pytest.fixture(scope="module")
def auto_map_run(tmp_path_factory):
    """A two-tick run between tiny BERTs whose config.json and tokenizer_config.json carry auto_map."""
    root = tmp_path_factory.mktemp("auto_map")
    a, b = bert_endpoints(root, steps=4)
    for folder in (a, b):
        _add_auto_map(folder)
    write_reviews(root / "reviews.parquet", n=48)
    config = {"max_ticks": 2, "min_iters": 1, "max_iters": 2, "batch_size": 16, "loss_ceiling": None}
    logger = logging.getLogger("hf_llpf")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        hf_llpf.connect(a, b, str(root / "reviews.parquet"), config=config, run_dir=root / "run", progress=False)
    finally:
        logger.removeHandler(handler)
    return root, records


def _written(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.name in CONFIG_FILES}


def test_auto_map_is_removed_from_every_point_the_assets_the_root_and_exports(auto_map_run, tmp_path, caplog):
    root, records = auto_map_run
    run = root / "run"
    written = _written(run)
    assert "assets/tokenizer_config.json" in written and "points/t_000000/config.json" in written
    assert _carriers(written) == []
    said = [r for r in records if "auto_map" in r]
    assert len(said) == 1 and "keep_auto_map=true" in said[0] and "assets/tokenizer_config.json" in said[0]
    files, pub = published_files(run)
    blobs = {rel: v if isinstance(v, bytes) else v.read_bytes() for rel, v in files.items()}
    assert "config.json" in blobs and "tokenizer_config.json" in blobs and _carriers(blobs) == []
    export_point(run, point="mid", out_dir=tmp_path / "mid")
    assert _carriers(_written(tmp_path / "mid")) == [] and "config.json" in _written(tmp_path / "mid")
    # The points still load as the plain transformers model they are.
    assert type(LLPFPath(run).model_at(1)).__name__ == "BertForSequenceClassification"


def test_a_run_holding_auto_map_is_published_without_it_unless_asked(auto_map_run, tmp_path, caplog):
    root, _ = auto_map_run
    run = tmp_path / "old_run"
    shutil.copytree(root / "run", run)
    for rel in ("points/t_000001/config.json", "assets/tokenizer_config.json"):  # a run of an earlier version
        data = json.loads((run / rel).read_text())
        data["auto_map"] = AUTO_MAP
        (run / rel).write_text(json.dumps(data))
    files, pub = published_files(run)
    blobs = {rel: v if isinstance(v, bytes) else v.read_bytes() for rel, v in files.items()}
    assert _carriers(blobs) == [] and "points/t_000001/config.json" in pub.remote_code_removed
    kept, pub = published_files(run, keep_auto_map=True)
    blobs = {rel: v if isinstance(v, bytes) else v.read_bytes() for rel, v in kept.items()}
    assert "points/t_000001/config.json" in _carriers(blobs) and pub.remote_code_removed == {}
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        export_point(run, point=1, out_dir=tmp_path / "one")
    assert _carriers(_written(tmp_path / "one")) == []
    assert sum("auto_map" in r.getMessage() and "--keep-auto-map" in r.getMessage() for r in caplog.records) == 1
    export_point(run, point=1, out_dir=tmp_path / "kept", keep_auto_map=True)
    assert _carriers(_written(tmp_path / "kept")) == ["config.json", "tokenizer_config.json"]


def test_keep_auto_map_keeps_them_in_the_points(auto_map_run, tmp_path):
    from hf_llpf.models.endpoints import save_model

    root, _ = auto_map_run
    ep = load_endpoint(root / "bert_0")
    assert ep.arch["auto_map"] == AUTO_MAP  # the loaded endpoint carries it
    save_model(ep.model, tmp_path / "kept", kind="transformers", arch=ep.arch, keep_auto_map=True)
    save_model(ep.model, tmp_path / "plain", kind="transformers", arch=ep.arch)
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert _carriers(_written(tmp_path / "plain")) == []
