"""Argument types and argument groups shared by the commands (docs/cli.md)."""

from __future__ import annotations

import argparse
import json
import os


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """``--recipe FILE`` and ``key=value`` overrides (they may also stand after options: see ``main``)."""
    p.add_argument("--recipe", help="YAML file of settings")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting (dotted keys for nested)")


def add_verbosity_args(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``-v``/``--verbose`` (DEBUG) and ``-q``/``--quiet`` (WARNING) of the ``hf_llpf`` logger (INFO otherwise);
    accepted before the command and after it (``hf-llpf -q train`` and ``hf-llpf train -q``)."""
    group = p.add_mutually_exclusive_group()
    default = "info" if top else argparse.SUPPRESS  # a sub-command's absent flag keeps the top-level value
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        default=default,
        help="debug messages",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="warning",
        default=default,
        help="only warnings and errors",
    )


def threads(text: str) -> int:
    """``--threads``: a whole number from 1 to the machine's CPU count."""
    limit = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: expected a whole number from 1 to {limit}")
    return value


def positive(flag: str):
    """An argparse type: a whole number of at least 1, named ``flag`` in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a whole number of at least 1")
        return value

    return parse


def json_object(text: str | None, *, flag: str) -> dict:
    """A JSON object given on the command line (``{}`` when absent); a :class:`ConfigError` otherwise."""
    from hf_llpf.errors import ConfigError

    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def main_process() -> bool:
    """Whether this process reports (tables, ``written:`` lines, verdicts): the main one under ``torchrun`` /
    ``accelerate launch``, the only one otherwise. The processes' state is the one the command's work set up."""
    from accelerate import PartialState

    return PartialState().is_main_process


def set_threads(n: int | None) -> None:
    """torch's CPU threads, when given."""
    if n:
        import torch

        torch.set_num_threads(n)
