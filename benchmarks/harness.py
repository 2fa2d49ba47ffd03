"""What every benchmark entry shares: the endpoint cache, measured subprocesses, the result writer.

- **Cache**: every trained endpoint lives under ``.bench_cache/endpoints/<model>-<key>/``, where ``key`` is a hash
  of its whole :class:`~hf_llpf.config.TrainRecipe`; a pair is two such endpoints (the same recipe, two seeds, or
  two recipes). Run directories of the entries land under ``.bench_cache/<entry>/``.
- **Measured subprocess**: :func:`measure` runs one function in a fresh Python process (``python -m
  benchmarks.harness JOB OUT``) and adds the child's peak resident memory (its own RSS high-water mark,
  ``VmHWM``) and wall time to what the function returns.
- **Results**: :class:`Results` appends one JSON line per row to ``benchmarks/results/<entry>.jsonl`` (with the
  command, the time, the machine and the torch threads) and prints the rows as a markdown table;
  :func:`update_doc_section` rewrites a generated table of ``docs/benchmarks.md`` between its markers.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / ".bench_cache"
DOC = ROOT / "docs" / "benchmarks.md"

# A column of a printed table: (row key, header, formatter of a present value).
Column = tuple[str, str, Callable[[Any], str]]


# ------------------------------------------------------------------------------------------ options
def entry_parser(entry: str, doc: str) -> argparse.ArgumentParser:
    """An entry's parser: its docstring's first line as the description, the rest as the epilog."""
    first, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=f"python -m benchmarks {entry}", description=first.strip(), epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip


def subcommand_parser(entry: str, doc: str, *, dest: str, names: tuple[str, ...]) -> argparse.ArgumentParser:
    """An entry made of subcommands, one per module ``benchmarks.<entry>.<name>``: each described by its module's
    docstring, with the module's ``add_arguments`` and the common options."""
    p = entry_parser(entry, doc)
    sub = p.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    for name in names:
        module = importlib.import_module(f"benchmarks.{entry}.{name}")
        first, _, rest = module.__doc__.partition("\n\n")
        one = sub.add_parser(name, help=first.strip(), description=first.strip(), epilog=rest,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        module.add_arguments(one)
        common_options(one)
    return p


def run_subcommand(entry: str, parser: argparse.ArgumentParser, dest: str, argv: list[str]) -> int:
    """Parse ``argv`` and run the chosen module's ``run(args, results)``."""
    args = parser.parse_args(argv)
    set_threads(args.threads)
    importlib.import_module(f"benchmarks.{entry}.{getattr(args, dest)}").run(args, Results(entry, args, argv))
    return 0


def common_options(parser: argparse.ArgumentParser, *, threads: int = 1) -> argparse.ArgumentParser:
    """Add the options every entry takes: ``--threads``, ``--results`` and ``--no-record``."""
    parser.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {threads})")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON-lines results")
    parser.add_argument("--no-record", action="store_true", help="print only: append nothing to the results")
    return parser


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "m2o.lr_policy=none"]`` → ``{"a": 1, "m2o": {"lr_policy": "none"}}`` (values read as YAML).

    An item may also hold several comma-separated pairs (``"step_r=0.1,arrival_tol=0.1"``); ``""`` is no override.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        for pair in (p for p in item.split(",") if p.strip()):
            if "=" not in pair:
                raise SystemExit(f"setting {pair!r}: expected key=value (nested keys with dots: m2o.step_a=0.02)")
            key, value = pair.split("=", 1)
            *parents, leaf = key.strip().split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
    return out


def set_threads(n: int) -> None:
    """Torch CPU threads for this process (every figure says how many it used)."""
    import torch

    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ the cache
def recipe_key(recipe: Any) -> str:
    """A short hash of a TrainRecipe's every field: the cache key of the endpoint it trains."""
    text = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def endpoint(recipe: Any, data: Any = None) -> tuple[Path, dict[str, Any]]:
    """The endpoint ``recipe`` trains, from the cache or trained into it; (its folder, its metrics).

    Args:
        recipe: a :class:`~hf_llpf.config.TrainRecipe`.
        data: the recipe's data when already loaded (loaded from ``recipe.data`` otherwise).
    """
    from hf_llpf.data.bundle import load_data
    from hf_llpf.training.endpoint import train_or_reuse

    folder = CACHE / "endpoints" / f"{recipe.model}-{recipe_key(recipe)}"
    data = data if data is not None else load_data(recipe.data)
    return folder, train_or_reuse(folder, recipe, data, progress=False)


def endpoint_pair(recipe_a: Any, recipe_b: Any, data: Any = None) -> tuple[Path, Path, int]:
    """Both endpoints of a pair (cached); (folder A, folder B, SGD iterations that trained A)."""
    a, metrics = endpoint(recipe_a, data)
    b, _ = endpoint(recipe_b, data)
    return a, b, metrics["iterations"]


def scratch(entry: str, name: str = "") -> Path:
    """``.bench_cache/<entry>/<name>``: where an entry's run directories go (never in the repository)."""
    folder = CACHE / entry / name if name else CACHE / entry
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------------ measured subprocess
def measure(call: str, kwargs: dict[str, Any], *, threads: int | None = 1) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh Python process; its JSON result plus the process's figures.

    The child sets ``threads`` torch threads first (``None``: torch is not imported for it). Adds ``peak_rss_mib``
    (the child's own RSS high-water mark) and ``process_s`` (its wall time, start-up and imports included).

    Raises:
        subprocess.CalledProcessError: the child failed (its stderr went to this process's stderr).
    """
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job.write_text(json.dumps({"call": call, "kwargs": kwargs, "threads": threads}))
        cmd = [sys.executable, "-m", "benchmarks.harness", str(job), str(out)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        result = json.loads(out.read_text())
    peak_kib = result.pop("_peak_rss_kib", None)
    if peak_kib is None:  # no /proc: the rusage, which on some systems includes the parent's before exec
        peak_kib = usage.ru_maxrss / (2**10 if sys.platform == "darwin" else 1)  # macOS: bytes, Linux: KiB
    return {**result, "peak_rss_mib": round(peak_kib / 2**10, 1), "process_s": round(seconds, 1)}


def peak_rss_kib() -> int | None:
    """This process's RSS high-water mark in KiB (``VmHWM``), or None without ``/proc``.

    Not ``ru_maxrss``: Linux keeps across ``exec`` the high-water mark of the memory the child was forked with,
    i.e. the parent's, so a child of a large process would report the parent's size.
    """
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else None


def _child(job_file: str, out_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    if job["threads"] is not None:
        set_threads(job["threads"])
    module, name = job["call"].split(":")
    result = getattr(importlib.import_module(module), name)(**job["kwargs"])
    Path(out_file).write_text(json.dumps({**result, "_peak_rss_kib": peak_rss_kib()}, default=str))
    return 0


# ------------------------------------------------------------------------------------------ results
def machine() -> str:
    """The machine in one line: architecture, CPU model and the vector instructions torch's kernels use, usable CPU
    cores, torch version. Kernels of other instruction sets round differently: a path trained on an AVX2 CPU is not
    bit for bit the one trained on an AVX-512 CPU, so results name theirs."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.machine()} ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}), {cores} CPU cores, "
        f"torch {torch.__version__}"
    )


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (``platform.processor()`` where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Results:
    """One entry's result writer: JSON lines under ``benchmarks/results/`` and the printed table.

    Args:
        entry: the entry's name (the file is ``<entry>.jsonl``).
        args: the parsed options (``threads``, ``results``, ``no_record`` are read).
        argv: the entry's arguments, recorded as the command that made each row.
    """

    def __init__(self, entry: str, args: argparse.Namespace, argv: list[str]) -> None:
        self.entry = entry
        self.file = None if args.no_record else Path(args.results) / f"{entry}.jsonl"
        self.command = " ".join(["python -m benchmarks", entry, *argv])
        self.threads = args.threads
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Keep ``row`` and append it (with the command, time, machine and threads) to the JSON-lines file."""
        self.rows.append(row)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "entry": self.entry,
                "command": self.command,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine(),
                "threads": self.threads,
                "row": row,
            }
            with open(self.file, "a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
        return row

    def table(self, columns: list[Column], rows: list[dict[str, Any]] | None = None) -> str:
        """Print (and return) the rows kept so far, or ``rows``, as a markdown table."""
        text = markdown_table(self.rows if rows is None else rows, columns)
        print(text, flush=True)
        return text


def read_results(file: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines results file, oldest first (none when it is absent)."""
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def markdown_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """``rows`` as a markdown table of ``columns``; ``–`` where a row has no value."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(row[k]) if row.get(k) is not None else "–" for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(spec: str) -> Callable[[Any], str]:
    """A column formatter from a format spec (``".4f"``, ``",d"``, ``".1%"``)."""
    return lambda v: format(v, spec)


def update_doc_section(doc: Path, content: str, marks: tuple[str, str]) -> bool:
    """Replace the text between the ``marks`` in ``doc`` by ``content``; False when there are none."""
    start, end = marks
    text = doc.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return False
    doc.write_text(pattern.sub(lambda _: f"{start}\n{content.rstrip()}\n{end}", text, count=1))
    return True


def write_doc_section(content: str, marks: tuple[str, str], doc: Path = DOC) -> None:
    """:func:`update_doc_section`, saying so on stderr when ``doc`` has no such markers."""
    if doc.is_file() and not update_doc_section(doc, content, marks):
        print(f"{doc}: no {marks[0]} ... {marks[1]} markers; not updated", file=sys.stderr)


# ------------------------------------------------------------------------------------------ timing
def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (these machines are shared: medians, not means)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
