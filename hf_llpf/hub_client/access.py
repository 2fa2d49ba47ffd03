"""Talking to the Hub: the client, offline mode, the token, and the errors a user can act on.

Every write (push, export with ``push_to_hub``) checks offline mode and the token before any work, and
translates the HTTP client's failures into :class:`HubAuthError` / :class:`~hf_llpf.errors.OfflineError`
messages that never contain the token.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hf_llpf import __version__
from hf_llpf.errors import ConfigError, OfflineError


class HubAuthError(ConfigError):
    """No Hugging Face token was found for a write, or the Hub refused the one given (never printed)."""


def hub_api(endpoint: str | None, token: str | None):
    """An ``HfApi`` for ``endpoint`` (default: ``HF_ENDPOINT`` or the public Hub), identified as hf_llpf."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name="hf_llpf", library_version=__version__)


def offline_mode() -> bool:
    """Whether offline mode is on (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, as huggingface_hub read it at
    import or as the environment says now)."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment may have changed since, so look at both.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(endpoint: str | None = None, *, timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached now (its host does not accept a connection within ``timeout`` seconds), or
    None when it can, or when a proxy is configured (then only the download itself can tell).

    A download from an unreachable Hub retries for tens of seconds before it gives up; this check costs one
    connection attempt, so a read that can be served from the cache (or not at all) fails fast.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    url = urlsplit(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as err:
        return f"{url.hostname}:{port} did not accept a connection ({err.strerror or type(err).__name__})"


def check_online(action: str) -> None:
    """Raise :class:`~hf_llpf.errors.OfflineError` when offline mode is on, before anything is sent."""
    if offline_mode():
        raise OfflineError(
            f"cannot {action}: offline mode is on (HF_HUB_OFFLINE=1). Nothing was sent or changed; unset "
            "HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) and run the same command again."
        )


def resolve_token(token: str | None) -> str:
    """The token given, else ``HF_TOKEN`` or the one saved by ``hf auth login``.

    Raises:
        HubAuthError: no token anywhere (the message says how to give one).
    """
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "token: no Hugging Face token found; a write token is needed to push. Pass --token / token=..., set "
            "the HF_TOKEN environment variable, or run `hf auth login` once."
        )
    return token


def _is_connection_error(err: BaseException) -> bool:
    # huggingface_hub raises its HTTP client's own types (httpx or requests) for an unreachable Hub.
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return bool(names & {"ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "NameResolutionError"})


@contextmanager
def hub_errors(api: Any, *, repo_id: str) -> Iterator[None]:
    """Re-raise a refused token (HTTP 401/403) as :class:`HubAuthError` and an unreachable Hub as OfflineError.

    Other errors pass unchanged. The HTTP error's message can include the URL, never the token.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubAuthError(
                f"token: the Hub refused the token for repo_id={repo_id!r} (HTTP {status}); it needs write access "
                "to that namespace"
            ) from None
        raise
    except Exception as err:
        if _is_connection_error(err):
            first = str(err).splitlines()[0][:200] if str(err) else "no answer"
            raise OfflineError(
                f"cannot reach the Hub at {getattr(api, 'endpoint', None) or 'the default endpoint'} "
                f"({type(err).__name__}: {first}). "
                "Nothing was published; check the network or HF_ENDPOINT and run the same command again."
            ) from None
        raise
