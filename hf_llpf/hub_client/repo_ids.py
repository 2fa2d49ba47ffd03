"""Repo ids and revisions: the one parser every ``org/name[@revision]`` given to hf_llpf goes through.

The repo id itself is checked by huggingface_hub's own validator (``validate_repo_id``), so hf_llpf accepts
exactly what the Hub client accepts, plus two rules of its own: a namespace is required (``org/name``,
never a bare ``name``), and a revision, where one is allowed, must be a plain git ref name.
"""

from __future__ import annotations

import re

from hf_llpf.errors import ConfigError

REPO_ID_FORM = (
    "'namespace/name' (letters, digits, '-', '_', '.'; at most 96 characters; no '--' or '..'; not starting "
    "or ending with '-' or '.'; not ending with '.git'), optionally followed by '@revision' where a revision "
    "is accepted"
)
_REF_RULE = (
    "letters, digits, '-', '_', '.', '/' without '..' or '//', not starting with '/', '.' or '-', not ending "
    "with '/', '.' or '.lock'"
)


def _is_ref_name(name: str) -> bool:
    return not (
        not re.fullmatch(r"[\w.\-/]+", name)
        or ".." in name
        or "//" in name
        or name.startswith(("/", ".", "-"))
        or name.endswith(("/", ".", ".lock"))
    )


def parse_repo_spec(spec: object, *, field: str = "repo_id", allow_revision: bool = True) -> tuple[str, str | None]:
    """Split ``"org/name@revision"`` into ``(repo_id, revision)`` and validate both.

    Args:
        spec: the value given (a CLI argument, a keyword argument, an ``endpoints.json`` entry).
        field: how to name the value in an error.
        allow_revision: whether ``@revision`` may follow the repo id.

    Returns:
        tuple: the repo id and the revision (None when none was given).

    Raises:
        ConfigError: naming ``field`` and the value, when it is not ``namespace/name[@revision]``; the
            reason huggingface_hub gives is included.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(spec, str):
        raise ConfigError(f"{field}={spec!r}: expected a string of the form {REPO_ID_FORM}")
    repo_id, sep, revision = spec.partition("@")
    if sep and not allow_revision:
        raise ConfigError(f"{field}={spec!r}: a revision is not accepted here; expected {REPO_ID_FORM}")
    if sep and not _is_ref_name(revision):
        what = "the revision after '@' is empty" if not revision else f"revision {revision!r} is not a ref name"
        raise ConfigError(f"{field}={spec!r}: {what}; expected {REPO_ID_FORM}, a revision being {_REF_RULE}")
    if repo_id.count("/") != 1:
        # validate_repo_id also accepts a bare "name"; a path repo always has a namespace.
        why = "no namespace" if "/" not in repo_id else "more than one '/'"
        raise ConfigError(f"{field}={spec!r}: not a valid Hub repo id ({why}); expected {REPO_ID_FORM}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"{field}={spec!r}: not a valid Hub repo id ({err}); expected {REPO_ID_FORM}") from None
    return repo_id, (revision or None)


def is_repo_id(value: object) -> bool:
    """Whether ``value`` is a plain ``namespace/name`` the Hub accepts (no revision)."""
    try:
        parse_repo_spec(value, allow_revision=False)
    except ConfigError:
        return False
    return True


def check_branch_name(name: str, *, field: str) -> str:
    """Return ``name`` if git and the Hub accept it as a branch name.

    Allowed: letters, digits, ``-_./``; no ``..`` or ``//``; not starting with ``/``, ``.`` or ``-``; not
    ending with ``/``, ``.`` or ``.lock``.

    Raises:
        ConfigError: naming ``field``, the value and the rule.
    """
    if not isinstance(name, str) or not _is_ref_name(name):
        raise ConfigError(f"{field}={name!r}: not a branch name; expected {_REF_RULE}")
    return name
