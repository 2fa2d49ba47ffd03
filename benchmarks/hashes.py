"""SHA-256 of every saved point of the demo and of the families at test scale: is every path unchanged?

    python -m benchmarks hashes --record benchmarks/results/hashes.json    # run everything, write the hashes
    python -m benchmarks hashes --check benchmarks/results/hashes.json     # run again, compare; exit 1 on a change
    python -m benchmarks hashes --check OLD.json --record NEW.json         # compare, and keep the new hashes

The runs: ``demo`` (what ``make demo`` does: ``hf-llpf demo``, endpoints trained afresh, the default connect on
the built-in digits) and, per family (default: lenet5 and gpt2, the cheapest image and language families of the
families benchmark, at its settings, the ones ``tests/end_to_end/test_families.py`` runs), ``m2m``, ``m2o`` (endpoint A
walked to the origin) and ``cross-sphere`` (M2O then M2M, forced). Each run is a fresh process with
``--threads`` torch threads (default 1). Per saved point the hash covers its tensors (every name, dtype, shape and
value, in name order: the files' headers and metadata are not part of it); the hash of the files' bytes is
recorded beside it and reported, but only the tensors decide. The demo also records its two endpoints.

Paths depend on the CPU's rounding (the vector instructions torch's kernels use) and on the thread count: compare
only runs of the same machine and threads (``--check`` prints both sides' machine and threads, and says when the
machines differ). ``--check`` prints per run ``same`` or ``different`` (with
the first point that differs) and exits 1 when any run differs or is missing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

ENTRY = "hashes"
FAMILIES = ("lenet5", "gpt2")
METHODS = ("m2m", "m2o", "cross-sphere")


# ------------------------------------------------------------------------------------------ hashing
def tensors_hash(files: list[Path]) -> str:
    """SHA-256 over every tensor of ``files`` (safetensors): name, dtype, shape and bytes, in name order."""
    import safetensors.torch
    import torch

    state: dict[str, Any] = {}
    for f in files:
        state.update(safetensors.torch.load_file(str(f)))
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def files_hash(files: list[Path]) -> str:
    """SHA-256 of the files' bytes, in name order (what the final check's ``point_hashes`` computes)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """``{"tensors": ..., "files": ...}`` of the ``*.safetensors`` files directly in ``folder``."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors file")
    return {"tensors": tensors_hash(files), "files": files_hash(files)}


def run_hashes(run_dir: Path) -> list[dict[str, Any]]:
    """Per saved point of a run directory: its index, tick and hashes."""
    import hf_llpf

    path = hf_llpf.Path(run_dir)
    ticks = path.ticks
    return [{"index": i, "tick": ticks[i], **folder_hashes(path.point_dir(i))} for i in range(len(path))]


# ------------------------------------------------------------------------------------------ the runs (children)
def demo_job(out: str) -> dict[str, Any]:
    """``hf-llpf demo --out OUT --threads N`` from nothing; the hashes of its endpoints and path points."""
    import torch

    from hf_llpf.cli import main as cli

    folder = Path(out)
    if folder.exists():  # the demo reuses endpoints it finds: train them afresh
        shutil.rmtree(folder)
    code = cli(["demo", "--out", out, "--threads", str(torch.get_num_threads())])
    if code != 0:
        raise SystemExit(f"hf-llpf demo exited with {code}")
    endpoints = {f"endpoint_seed{s}": folder_hashes(folder / f"endpoint_seed{s}") for s in (0, 1)}
    return {"status": "done", "endpoints": endpoints, "points": run_hashes(folder / "path")}


def family_job(name: str, method: str, root: str) -> dict[str, Any]:
    """One family's run of the families benchmark with ``method``; its status, figures and point hashes."""
    from benchmarks.families import run_family

    row = run_family(name, Path(root), method=method)
    out = {k: row.get(k) for k in ("status", "ticks", "sgd_iters", "points", "llpf_max_train_loss", "ceiling")}
    if "traceback" in row:
        print(row["traceback"], file=sys.stderr, flush=True)
        return {**out, "points": []}
    return {**out, "points": run_hashes(Path(row["run_dir"]))}


def runs(families: tuple[str, ...], demo: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run name → (the child's function, its arguments)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if demo:
        out["demo"] = ("benchmarks.hashes:demo_job", {"out": str(harness.scratch(ENTRY, "demo"))})
    for name in families:
        for method in METHODS:
            job = {"name": name, "method": method, "root": str(harness.scratch(ENTRY, "families"))}
            out[f"{name} {method}"] = ("benchmarks.hashes:family_job", job)
    return out


def measure_all(jobs: dict[str, tuple[str, dict[str, Any]]], threads: int) -> dict[str, dict[str, Any]]:
    """Every run in its own process; a failed one is recorded with its status and no points."""
    measured = {}
    for name, (call, kwargs) in jobs.items():
        start = time.perf_counter()
        try:
            measured[name] = harness.measure(call, kwargs, threads=threads)
        except subprocess.CalledProcessError as err:
            measured[name] = {"status": f"failed: {err}", "points": []}
        seconds = time.perf_counter() - start
        measured[name]["seconds"] = round(seconds, 1)
        print(f"{name}: {len(measured[name]['points'])} points, {measured[name].get('status')}, {seconds:.0f} s",
              flush=True)  # fmt: skip
    return measured


# ------------------------------------------------------------------------------------------ compare
def compare_run(old: dict[str, Any], new: dict[str, Any] | None) -> str:
    """``same``, or ``different: ...`` naming the first point (or endpoint) whose tensors differ."""
    if new is None:
        return "different: not run"
    if not old["points"] or not new["points"]:
        return f"different: no points (recorded: {old.get('status')}, now: {new.get('status')})"
    for key, was in old.get("endpoints", {}).items():
        if new.get("endpoints", {}).get(key, {}).get("tensors") != was["tensors"]:
            return f"different: {key}'s tensors"
    if len(old["points"]) != len(new["points"]):
        return f"different: {len(new['points'])} points instead of {len(old['points'])}"
    for a, b in zip(old["points"], new["points"], strict=True):
        if a["tensors"] != b["tensors"] or a["tick"] != b["tick"]:
            return f"different: from point {a['index']} (tick {a['tick']}; now tick {b['tick']})"
    same_files = all(a["files"] == b["files"] for a, b in zip(old["points"], new["points"], strict=True))
    return "same" if same_files else "same (the files' bytes differ: headers or metadata)"


def environment(threads: int) -> dict[str, Any]:
    """Where the hashes were computed: time, machine, threads, and the git commit of the code."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=harness.ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": harness.machine(), "threads": threads, "commit": commit}  # fmt: skip


# ------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--record", type=Path, metavar="FILE", help="run everything and write the hashes to FILE")
    p.add_argument("--check", type=Path, metavar="FILE", help="run FILE's runs again and compare (with --record: "
                   "and write what they gave to that FILE)")  # fmt: skip
    p.add_argument("--families", nargs="*", default=list(FAMILIES), metavar="FAMILY",
                   help=f"families to run (default: {' '.join(FAMILIES)}; --check: the file's)")  # fmt: skip
    p.add_argument("--no-demo", action="store_true", help="leave out the demo (without --check)")
    p.add_argument("--note", default="", help="a line kept in the file (--record)")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Record and/or check; exit 1 when any run differs (--check) or failed (--record)."""
    args = parser().parse_args(argv)
    if not (args.record or args.check):
        parser().error("give --record FILE, --check FILE or both")
    start = time.perf_counter()
    recorded = json.loads(args.check.read_text()) if args.check else None
    if recorded is not None:
        names = list(recorded["runs"])
        families = tuple(dict.fromkeys(n.split()[0] for n in names if n != "demo"))
        jobs = {n: j for n, j in runs(families, "demo" in names).items() if n in names}
        here = environment(args.threads)
        print(f"recorded: {recorded.get('machine')}, {recorded.get('threads')} thread(s), "
              f"commit {recorded.get('commit')}")  # fmt: skip
        print(f"now:      {here['machine']}, {here['threads']} thread(s), commit {here['commit']}")
    else:
        jobs = runs(tuple(args.families), not args.no_demo)
    measured = measure_all(jobs, args.threads)
    code = 1 if any(not m["points"] for m in measured.values()) else 0
    if args.record:
        record = {**environment(args.threads), "seconds": round(time.perf_counter() - start), "note": args.note,
                  "runs": measured}  # fmt: skip
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{args.record}: {len(measured)} runs, {time.perf_counter() - start:.0f} s")
    if recorded is not None:
        code = report(args, recorded, measured, start)
    return code


def report(args: argparse.Namespace, recorded: dict, measured: dict, start: float) -> int:
    """Print same/different per recorded run (and record the verdicts); 1 when any differs."""
    verdicts = {n: compare_run(run, measured.get(n)) for n, run in recorded["runs"].items()}
    results = harness.Results(ENTRY, args, [f"--check {args.check}"])
    for name, verdict in verdicts.items():
        results.add({"run": name, "verdict": verdict, "seconds": measured.get(name, {}).get("seconds")})
    print()
    results.table([("run", "run", str), ("verdict", "verdict", str), ("seconds", "seconds", harness.fmt(".0f"))])
    print(f"{sum(v.startswith('same') for v in verdicts.values())}/{len(verdicts)} same; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    if recorded.get("machine") != harness.machine():
        print(
            "the hashes were recorded on another machine (or one whose CPU was not named): a difference may be the "
            "CPU's rounding; record a baseline here with --record at the commit before the change, then --check"
        )
    return 0 if all(v.startswith("same") for v in verdicts.values()) else 1
