"""A 124M-parameter GPT-2 connected with M2M, unsharded in one process and sharded over two: memory and time.

Two GPT-2-small endpoints (``transformers.GPT2Config`` defaults: 12 layers of width 768, 12 heads, a vocabulary of
50,257 of which the generated text uses a few dozen words) are trained briefly (AdamW, batch 8 of 64-token blocks,
``--steps`` steps) from independent initialisations (seeds 0 and 1) on a generated text file, and cached in
``OUT/endpoints`` between sittings. Then ``hf-llpf connect A B --method m2m`` runs twice with the same settings
(:data:`CONNECT`: three hand-set stages, ``step_r`` 0.5 so that each stage lands in two ticks, one SGD iteration a
tick, a ceiling checked on the few training blocks, points only at stage boundaries): once as one process, once
under ``torchrun --standalone --nproc_per_node 2`` with ``sharding=fsdp``.

    python -m benchmarks big [--out runs/bench-big] [--steps 10] [--threads 1]

Each process of a connect runs :func:`child` (``python -m benchmarks.big CHILD_OUT -- connect ...``): it imports
the libraries a connect uses, records its resident memory then (``rss_after_imports``), runs
:func:`hf_llpf.cli.main` and records its peak resident memory (``VmHWM``). Printed per run: peak RSS per process,
RSS after imports, the model's float32 bytes, the peak above the imports in copies of the model, the final check
(how many of its positions it took from the run's own passes, and its seconds), and a tick's
wall time split into SGD, moves + corrections, probes, point writes, checkpoint and the rest, from the run's
``--profile`` timing (``summary.run.timing``); then the targets, met or not. The run directories are deleted at
the end (``--keep-runs`` keeps them); rows go to ``benchmarks/results/big.jsonl``. ``--layers``, ``--width``,
``--heads`` and ``--vocab`` shrink the model (the test runs it tiny); docs/benchmarks.md, "A 124M model".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

ENTRY = "big"
BLOCK, BATCH = 64, 8
LR = 5e-4  # AdamW, gradients clipped at norm 1
CORPUS_LINES = 240  # ~30 blocks of 64 tokens: the exact certificate's probe is a few batches of 8
# The three stages of the walk: embeddings with the first third of the blocks, the middle third, the rest.
# The connect's settings besides the stages (docs/benchmarks.md, "A 124M model", says why each).
CONNECT = [
    "method=m2m", "step_r=0.5", "max_ticks=12", f"batch_size={BATCH}", f"data.max_length={BLOCK}",
    "min_iters=1", "max_iters=1", "repair_budget=2", "max_backtracks=0", "certify_segments=false",
    "save_every=1000", "checkpoint_every=3", "sync_check_every=1000",
]  # fmt: skip
SHARDED = ["sharding=fsdp"]


# ------------------------------------------------------------------------------------------ endpoints
def _config(layers: int, width: int, heads: int, vocab: int):
    from transformers import GPT2Config

    return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, use_cache=False)


def _tokenizer():
    from tests.generated_text import word_tokenizer

    tok = word_tokenizer()
    tok.model_max_length = 1024  # the generated tokenizer says 32; the blocks are 64 tokens
    return tok


def _blocks(corpus: Path, tok) -> Any:
    """The corpus as 64-token blocks (texts joined with EOS between them, the partial last block dropped)."""
    import torch

    ids: list[int] = []
    for line in (s for s in corpus.read_text().splitlines() if s.strip()):
        ids += tok(line)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // BLOCK
    return torch.tensor(ids[: n * BLOCK]).view(n, BLOCK)


def train_endpoint(folder: str, corpus: str, *, model_args: dict, seed: int, steps: int, device: str = "cpu") -> dict:
    """One endpoint from its own initialisation (``seed``): ``steps`` AdamW steps on batches of 8 blocks on
    ``device`` (initialised and saved on the CPU); kept when ``folder/metrics.json`` is there (the cache between
    sittings)."""
    import torch
    from transformers import GPT2LMHeadModel

    folder, corpus = Path(folder), Path(corpus)
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    tok = _tokenizer()
    torch.manual_seed(seed)
    config = _config(**model_args)
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    model = GPT2LMHeadModel(config).to(device)
    blocks = _blocks(corpus, tok).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        idx = order[[(step * BATCH + i) % len(order) for i in range(BATCH)]]
        loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a few unclipped steps at this size can diverge
        opt.step()
        losses.append(round(float(loss.detach()), 4))
    seconds = time.perf_counter() - start
    model.cpu().eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    metrics = {"seconds": round(seconds, 1), "iterations": steps, "seed": seed, "losses": losses}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def endpoints(
    out: Path, *, model_args: dict, steps: int, threads: int = 1, device: str = "cpu", in_process: bool = False
) -> tuple[Path, list[Path], list[dict]]:
    """The corpus and both endpoints (cached under ``out``, keyed by the model's size, the steps and a device other
    than the CPU), each trained in a process of its own (this one never holds a model), or in this one
    (``in_process``: the GPU check, which measures its parts in one process)."""
    from tests.generated_text import write_text_file

    corpus = out / "corpus.txt"
    if not corpus.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_text_file(corpus, lines=CORPUS_LINES)
    key = "gpt2-L{layers}-E{width}-H{heads}-V{vocab}".format(**model_args) + f"-steps{steps}"
    key += "" if device == "cpu" else f"-{device}"
    folders = [out / "endpoints" / f"{key}-seed{s}" for s in (0, 1)]
    metrics = []
    for seed, folder in enumerate(folders):
        kwargs = {"folder": str(folder), "corpus": str(corpus), "model_args": model_args, "seed": seed, "steps": steps,
                  "device": device}  # fmt: skip
        cached = folder / "metrics.json"
        known = json.loads(cached.read_text()) if cached.is_file() else None
        if known is None and in_process:
            known = train_endpoint(**kwargs)
        metrics.append(known or harness.measure("benchmarks.big:train_endpoint", kwargs, threads=threads))
    return corpus, folders, metrics


def fp32_bytes(folder: Path) -> int:
    """The model's parameters in float32 bytes, read from the header of its ``model.safetensors`` (a tied
    ``lm_head`` is stored once, and held once)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += 4 * n
    return total


# ------------------------------------------------------------------------------------------ the measured connects
def _status_kib(field: str) -> int | None:
    import re

    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def child(out: Path, argv: list[str]) -> int:
    """One process of a measured connect: imports, its RSS then, ``hf_llpf.cli.main(argv)``, its peak RSS; the
    figures to ``out/rank<RANK>.json``."""
    import accelerate  # noqa: F401  (what a connect imports before its first tensor: counted as "after imports")
    import safetensors.torch  # noqa: F401
    import torch
    import torch.distributed  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from hf_llpf.cli import main as cli

    after_imports = _status_kib("VmRSS")
    start = time.perf_counter()
    code = cli(argv)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    figures = {
        "rank": int(os.environ.get("RANK", "0")),
        "exit": code,
        "rss_after_imports_mib": round(after_imports / 1024, 1) if after_imports else None,
        "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1) if _status_kib("VmHWM") else None,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "peak_gpu_mib": round(gpu, 1) if gpu is not None else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{figures['rank']}.json").write_text(json.dumps(figures))
    return code


def connect_argv(run: Path, a: Path, b: Path, corpus: Path, *, threads: int, extra: list[str]) -> list[str]:
    """``hf-llpf connect``'s arguments for the measured runs: :data:`CONNECT`, then ``extra``, with ``--profile``."""
    return ["connect", str(a), str(b), "--data", str(corpus), "--out", str(run), "--overwrite", "--no-progress",
            "--profile", "--threads", str(threads), *CONNECT, *extra]  # fmt: skip


def connect(
    run: Path, a: Path, b: Path, corpus: Path, *, processes: int, threads: int, extra: list[str] | None = None,
    sharded: bool | None = None, timeout: float | None = None,
) -> dict:  # fmt: skip
    """One measured ``hf-llpf connect`` (``sharded``, by default ``processes`` > 1: ``sharding=fsdp`` under torchrun,
    one process included); its figures and timing. ``extra``: settings after :data:`CONNECT`; ``timeout``: seconds
    before the launch is killed (``subprocess.TimeoutExpired``)."""
    sharded = processes > 1 if sharded is None else sharded
    mem = run.parent / f"{run.name}-memory"
    shutil.rmtree(mem, ignore_errors=True)
    argv = connect_argv(run, a, b, corpus, threads=threads, extra=[*(extra or []), *(SHARDED if sharded else [])])
    launch = [sys.executable, "-m", "benchmarks.big", "--child", str(mem), "--"]
    if processes > 1 or sharded:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                  "-m", "benchmarks.big", "--child", str(mem), "--"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(harness.ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([*launch, *argv], cwd=harness.ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmarks big: connect ({processes} process(es)) failed ({done.returncode}):\n"
                 f"{(done.stdout + done.stderr)[-4000:]}")  # fmt: skip
    ranks = [json.loads((mem / f"rank{r}.json").read_text()) for r in range(processes)]
    shutil.rmtree(mem, ignore_errors=True)
    run_summary = json.loads((run / "path_metrics.json").read_text())["summary"]["run"]
    return {"wall_s": round(wall, 1), "ranks": ranks, "run": run_summary, "log": done.stdout}


# ------------------------------------------------------------------------------------------ the figures
# A tick's parts, from the run's profile phases (hf_llpf/cli/render.py, PROFILE_PHASES).
PARTS = {
    "sgd": ("train",),
    "moves_corrections": ("move", "correct"),
    "probes": ("probe",),
    "point_writes": ("write_points",),
    "checkpoint": ("write_checkpoint",),
    "rest": ("snapshot", "record", "write_metrics"),
}
OVERHEAD = ("moves_corrections", "point_writes", "checkpoint")  # the target's "outside SGD and probes" parts


def tick_split(timing: dict[str, float], ticks: int) -> dict[str, float]:
    """Seconds per tick of each part of :data:`PARTS`, ``tick`` (their sum) and ``overhead_share``."""
    parts = {name: sum(float(timing.get(k, 0.0)) for k in keys) / max(ticks, 1) for name, keys in PARTS.items()}
    tick = sum(parts.values())
    parts = {k: round(v, 3) for k, v in parts.items()}
    overhead = sum(parts[k] for k in OVERHEAD)
    return {**parts, "tick": round(tick, 3), "overhead_share": round(overhead / tick, 4) if tick else None}


def row(mode: str, measured: dict, model_bytes: int) -> dict:
    """The printed row of one connect."""
    ranks, run = measured["ranks"], measured["run"]
    peak = max(r["peak_rss_mib"] for r in ranks)
    imports = max(r["rss_after_imports_mib"] for r in ranks)
    cert = run.get("certification") or {}
    final = cert.get("final_check") or {}
    return {
        "mode": mode,
        "processes": len(ranks),
        "peak_rss_mib": [r["peak_rss_mib"] for r in ranks],
        "rss_after_imports_mib": [r["rss_after_imports_mib"] for r in ranks],
        "model_fp32_mib": round(model_bytes / 2**20, 1),
        "above_imports_copies": round((peak - imports) * 2**20 / model_bytes, 2),
        "ticks": run.get("ticks"),
        "sgd_iters": run.get("sgd_iters"),
        "certified": cert.get("certified"),
        "connect_s": measured["wall_s"],
        # The final check: positions taken from the passes the run made over the same bits, of how many, and its time.
        "final_check": f"{final.get('reused')} of {final.get('points', 0) + final.get('segments', 0)} reused, "
        f"{final.get('seconds', 0):.1f} s"
        if final
        else None,
        "per_tick_s": tick_split(run.get("timing", {}), run.get("ticks") or 0),
        "timing": run.get("timing", {}),
    }


def targets(unsharded: dict, sharded: dict, model_bytes: int) -> list[tuple[str, bool, str]]:
    """The issue's three targets: (what, met?, the figures)."""
    peak_u, imports_u = max(unsharded["peak_rss_mib"]), max(unsharded["rss_after_imports_mib"])
    ratio = max(sharded["peak_rss_mib"]) / peak_u
    copies = unsharded["above_imports_copies"]
    out = [
        ("each sharded process <= 0.6x the unsharded peak", ratio <= 0.6,
         f"{max(sharded['peak_rss_mib']):.0f} / {peak_u:.0f} MiB = {ratio:.2f}x"),
        ("unsharded peak - RSS after imports <= 5x the model's fp32 bytes", copies <= 5,
         f"{peak_u - imports_u:.0f} MiB = {copies:.2f}x {model_bytes / 2**20:.0f} MiB"),
    ]  # fmt: skip
    for r in (unsharded, sharded):
        t = r["per_tick_s"]
        share = t["overhead_share"] or 0.0
        out.append((f"{r['mode']}: moves + corrections + point writes + checkpoint <= 10% of a tick", share <= 0.1,
                    f"{sum(t[k] for k in OVERHEAD):.2f} s of {t['tick']:.2f} s a tick = {share:.1%}"))  # fmt: skip
    return out


def _mib(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


COLUMNS: list[harness.Column] = [
    ("mode", "run", str),
    ("processes", "processes", str),
    ("peak_rss_mib", "peak RSS per process (MiB)", _mib),
    ("rss_after_imports_mib", "RSS after imports (MiB)", _mib),
    ("model_fp32_mib", "model fp32 (MiB)", harness.fmt(",.1f")),
    ("above_imports_copies", "peak above imports (model copies)", harness.fmt(".2f")),
    ("ticks", "ticks", str),
    ("sgd_iters", "SGD iters", str),
    ("connect_s", "connect (s)", harness.fmt(".0f")),
    ("final_check", "final check", str),
]
TICK_COLUMNS: list[harness.Column] = [
    ("mode", "run", str),
    *((k, f"{k.replace('_', ' ')} (s/tick)", harness.fmt(".2f")) for k in PARTS),
    ("tick", "tick (s)", harness.fmt(".2f")),
    ("overhead_share", "moves+corr.+writes+ckpt share", harness.fmt(".1%")),
]


def report(results: harness.Results, rows: list[dict], model_bytes: int) -> None:
    """Print the memory table, the tick table and the targets."""
    results.table(COLUMNS, rows)
    print()
    results.table(TICK_COLUMNS, [{"mode": r["mode"], **r["per_tick_s"]} for r in rows])
    print()
    for what, met, figures in targets(rows[0], rows[1], model_bytes):
        print(f"{'met    ' if met else 'NOT met'}  {what}: {figures}")


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--out", type=Path, default=Path("runs/bench-big"), help="working folder (endpoints kept there)")
    p.add_argument("--steps", type=int, default=10, help="AdamW steps of each endpoint's training (default 10)")
    p.add_argument("--layers", type=int, default=12, help="GPT-2 layers (default 12: GPT-2 small)")
    p.add_argument("--width", type=int, default=768, help="GPT-2 n_embd (default 768)")
    p.add_argument("--heads", type=int, default=12, help="GPT-2 attention heads (default 12)")
    p.add_argument("--vocab", type=int, default=50257, help="GPT-2 vocabulary size (default 50257)")
    p.add_argument("--keep-runs", action="store_true", help="keep the run directories (a point is the model's size)")
    return harness.common_options(p)


def stages_override(layers: int) -> str:
    """``stages=...``: three explicit stages, the embeddings with the first third of the blocks, the middle third,
    the rest with the final LayerNorm."""
    cut1, cut2 = max(layers // 3, 1), max(2 * layers // 3, 1)

    def blocks(lo: int, hi: int) -> list[str]:
        return [rf"^transformer\.h\.{i}\." for i in range(lo, hi)]

    stages = [[r"^transformer\.w[tp]e", *blocks(0, cut1)], blocks(cut1, cut2), [*blocks(cut2, layers), r"ln_f"]]
    return "stages=" + json.dumps({"stages": [s for s in stages if s]})


def main(argv: list[str]) -> int:
    """Endpoints (cached), the unsharded and the sharded connect; print and record the figures."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    model_args = {"layers": args.layers, "width": args.width, "heads": args.heads, "vocab": args.vocab}
    corpus, (a, b), trained = endpoints(args.out, model_args=model_args, steps=args.steps, threads=args.threads)
    model_bytes = fp32_bytes(a)
    print(f"endpoints: {model_bytes / 4:,.0f} parameters, {args.steps} steps each "
          f"({trained[0]['seconds']:.0f} s, {trained[1]['seconds']:.0f} s when trained; last batch loss "
          f"{trained[0]['losses'][-1]}, {trained[1]['losses'][-1]})", flush=True)  # fmt: skip
    stages = [stages_override(args.layers)]
    results = harness.Results(ENTRY, args, argv)
    rows = []
    for mode, processes in (("unsharded", 1), ("sharded", 2)):
        run = args.out / f"path-{mode}"
        measured = connect(run, a, b, corpus, processes=processes, threads=args.threads, extra=stages)
        print(measured["log"], flush=True)
        rows.append(results.add({**row(mode, measured, model_bytes), "steps": args.steps, "model": model_args}))
        if not args.keep_runs:
            shutil.rmtree(run, ignore_errors=True)
    report(results, rows, model_bytes)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # one process of a measured connect
        sys.exit(child(Path(sys.argv[2]), sys.argv[4:]))
    sys.exit(main(sys.argv[1:]))
