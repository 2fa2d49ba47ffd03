"""``hf-llpf``: the command line. It only parses arguments, calls the library and prints (docs/cli.md).

One module per command, each with ``register(sub)`` (its sub-parser) and ``run(args)``; all printed text is
built in :mod:`hf_llpf.cli.render`, the shared argument types live in :mod:`hf_llpf.cli.args`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_llpf import __version__
from hf_llpf.cli import compare, connect, demo, evaluate, export, groups, push, spheres, train, verify
from hf_llpf.cli.args import add_verbosity_args
from hf_llpf.errors import LLPFError

# In ``--help`` order.
COMMANDS = (train, connect, demo, groups, spheres, push, export, evaluate, verify, compare)

# Further ``register(sub)`` callables (e.g. from an extension): each adds its sub-parser after the built-ins.
_EXTRA_COMMANDS: list = []


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-llpf`` (every subcommand is listed in ``--help``)."""
    parser = argparse.ArgumentParser(prog="hf-llpf", description="Low-loss paths between trained checkpoints (LLPF).")
    parser.add_argument("--version", action="version", version=f"hf-llpf {__version__}")
    add_verbosity_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for register in _EXTRA_COMMANDS:
        register(sub)
    for command_parser in dict.fromkeys(sub.choices.values()):  # (an alias maps to its command's parser)
        add_verbosity_args(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-llpf`` console script."""
    from hf_llpf.cli.render import error, os_error

    parser = build_parser()
    # key=value overrides may stand anywhere, also after options: argparse leaves those in `extra`.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from hf_llpf.reporting.logging import configured

    with configured(args.log_level):
        try:
            return args.func(args) or 0
        except LLPFError as err:
            print(error(args.command, err), file=sys.stderr)
            return 2
        except OSError as err:  # last resort: a full disk or a refused write, wherever it happened
            print(os_error(args.command, err, rerun=_rerun(args)), file=sys.stderr)
            return 2
        finally:
            _close_process_group()


def _close_process_group() -> None:
    """Destroy the launch's process group (torchrun, ``accelerate launch``), if the command made one: a gloo group
    left to the interpreter's exit can abort a process while its threads are torn down ("terminate called without
    an active exception"), which fails a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rerun(args: argparse.Namespace) -> str | None:
    """How to run a ``connect`` again that stopped on a failed write: ``--resume`` when its run directory holds a
    checkpoint, ``--overwrite`` when it is this tool's run directory without one yet; None otherwise."""
    from hf_llpf.run import CHECKPOINT_DIR, MARKER
    from hf_llpf.run.state import exists

    out = getattr(args, "out", None)
    if args.command != "connect" or out is None or getattr(args, "repeats", 1) not in (None, 1):
        return None
    if exists(Path(out) / CHECKPOINT_DIR):
        return f"run the same command with --resume: {out} continues from its last checkpoint"
    if (Path(out) / MARKER).is_file() and not getattr(args, "resume", False):
        return f"run the same command with --overwrite: {out} holds no checkpoint yet"
    return None
