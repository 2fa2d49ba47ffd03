"""Builders of small fake run directories for the Hub tests (no LLPF engine involved).

A run directory is written with the real :class:`~hf_llpf.run.RunWriter`: five points on the straight
line between two small endpoints (timm ``small_cnn`` or a tiny BERT), metrics with a plausible summary,
a plot, the settings and an evaluation report section in README.md. As a run does, timm points are saved with the
data config of the recorded data (digits: 1 x 8 x 8, mean/std 0.5) and a BERT run keeps its tokenizer in ``assets/``.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from pathlib import Path

import torch
from tiny_models import tiny_bert

from hf_llpf.models.endpoints import as_endpoint, create_model, save_model
from hf_llpf.models.timm_config import with_data_config
from hf_llpf.run import PointRecord, RunWriter, TickRecord
from hf_llpf.run.assets import merge_assets, tokenizer_files, write_assets
from hf_llpf.stages import build_stages

# What a digits run's timm points record (hf_llpf.models.timm_config.run_data_config of the digits bundle).
DIGITS_DATA_CONFIG = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.5,), "interpolation": "bilinear",
                      "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip

TICKS = (0, 5, 10, 15, 20)
SUMMARY = {
    "llpf": {
        "max_train_loss": 0.31,
        "barrier": 0.05,
        "min_train_acc": 0.91,
        "test_loss_range": [0.2, 0.4],
        "test_acc_range": [0.88, 0.93],
        "path_length": 12.5,
        "straight_distance": 10.0,
        "worst_continuity_loss": 0.33,
    },
    "linear": {"max_train_loss": 2.1, "barrier": 1.8, "min_train_acc": 0.35},
}
REPORT = "<!-- hf_llpf:report:start -->\n## Evaluation report\n\nBarrier 0.05 vs 1.8.\n<!-- hf_llpf:report:end -->"


def make_endpoints(kind: str) -> tuple:
    """Two endpoints of the same architecture with different weights."""
    if kind in ("timm", "timm-plain"):
        # "timm-plain": an architecture of timm itself (~100k parameters), loadable with no hf_llpf import.
        name, args = ("small_cnn", {}) if kind == "timm" else ("test_efficientnet", {"in_chans": 1})
        torch.manual_seed(0)
        a = create_model(name, num_classes=10, **args)
        torch.manual_seed(1)
        b = create_model(name, num_classes=10, **args)
        return a.eval(), b.eval()
    return tiny_bert(0), tiny_bert(1)


def png_bytes(width: int = 24, height: int = 24, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels (incompressible, so well above olah's 121-149 byte fault)."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_run_dir(
    root: Path,
    *,
    kind: str = "timm",
    hub_ids: tuple[str, str] | None = None,
    command: str | None = "hf-llpf connect org/a org/b --data digits --seed 0",
    report: bool = True,
    evaluated: bool = False,
) -> Path:
    """Write a fake run directory of five points between two endpoints; returns ``root``.

    Args:
        kind: ``"timm"`` (small_cnn), ``"timm-plain"`` (timm's test_efficientnet) or ``"transformers"`` (tiny BERT).
        hub_ids: endpoint ids as Hub repos (recorded with a 40-hex revision) instead of local folders.
        command: the ``command`` entry of ``endpoints.json`` (None: not recorded).
        report: write an evaluation report section into README.md.
        evaluated: give every point the evaluation's own train figures (``eval_train_loss``/``eval_train_acc``,
            from :func:`eval_train`), as ``hf-llpf evaluate`` does.
    """
    a, b = make_endpoints(kind)
    ep = with_data_config(as_endpoint(a), DIGITS_DATA_CONFIG)
    writer = RunWriter(root)
    if kind == "transformers":  # the tokenizer the BERT endpoints share (vocabulary within tiny_bert's 50)
        from generated_text import word_tokenizer

        files = tokenizer_files(None, word_tokenizer())
        write_assets(root, merge_assets(files, dict(files), labels=("a", "b")))
    sa, sb = a.state_dict(), b.state_dict()
    points, ticks = [], []
    for index, tick in enumerate(TICKS):
        t = tick / TICKS[-1]
        state = {k: (1 - t) * sa[k] + t * sb[k] if sa[k].is_floating_point() else sa[k] for k in sa}
        model = make_endpoints(kind)[0]
        model.load_state_dict(state)
        rel = writer.write_point(tick, model, ep)
        phase = "start" if index == 0 else "end" if index == len(TICKS) - 1 else "m2m"
        loss = 0.1 + 0.2 * (1 - abs(2 * t - 1))
        row = PointRecord(index, tick, min(index, 2), phase, loss, 3, 10.0 * t, 10.0 * (1 - t), index in (0, 4), rel)
        points.append({**row.row(), "test_acc": 0.9 - 0.01 * index, "test_loss": 0.2 + 0.01 * index})
        if evaluated:
            points[-1].update(zip(("eval_train_loss", "eval_train_acc"), eval_train(index, loss), strict=True))
        ticks.append(TickRecord(tick, min(index, 2), loss, 3, 3 * index).row())
    writer.write_metrics(points, ticks, SUMMARY)

    def entry(name: str, model) -> dict:
        if hub_ids:
            rev = hashlib.sha1(name.encode()).hexdigest()
            return {"id": name, "revision": rev, "kind": ep.kind, "architecture": _arch(ep, model)}
        return {
            "id": f"runs/endpoints/{name}",
            "revision": "local:0123456789abcdef",
            "kind": ep.kind,
            "architecture": _arch(ep, model),
        }

    endpoints = {"A": entry(hub_ids[0] if hub_ids else "seed0", a), "B": entry(hub_ids[1] if hub_ids else "seed1", b)}
    if command:
        endpoints["command"] = command
    writer.write_json("endpoints.json", endpoints)
    example = a.dummy_inputs if kind == "transformers" else torch.zeros(2, 1, 8, 8)
    writer.write_json("layer_groups.json", build_stages(a, example).to_json())
    writer.write_yaml("llpf_config.yaml", "method: m2m\ndata:\n  source: digits\nseed: 0\nstep_r: 0.02\n")
    writer.close()
    (root / "plots").mkdir()
    (root / "plots" / "loss.png").write_bytes(png_bytes(seed=1))
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "state.json").write_bytes(b"resume state, never published" * 10)
    (root / "points" / ".tmp_t_000099").mkdir()
    (root / "points" / ".tmp_t_000099" / "junk.bin").write_bytes(b"half-written" * 20)
    if report:
        (root / "README.md").write_text("# old card\n\n" + REPORT + "\n")
    return root


def eval_train(index: int, loss: float) -> tuple[float, float]:
    """The evaluated train loss and accuracy a fixture point gets with ``evaluated=True``."""
    return round(loss + 0.01, 6), round(0.99 - 0.02 * index, 6)


def _arch(ep, model) -> str:
    return ep.arch.get("architecture") or type(model).__name__


def save_endpoint_folder(model, folder: Path) -> Path:
    """Save an endpoint as a standalone model folder (timm or transformers format)."""
    ep = as_endpoint(model)
    save_model(model, folder, kind=ep.kind, arch=ep.arch)
    return folder


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to prove a failed push changed nothing)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def state_digest(state: dict) -> str:
    """One hash of a state dict's names and values (to compare weights across processes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def dump(obj) -> str:
    """JSON for results passed between processes."""
    return json.dumps(obj, indent=1, default=str)
