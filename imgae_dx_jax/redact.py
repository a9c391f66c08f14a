"""What may be shown of a URL, a message or a config: the same text without credentials.

Logs, caches' indexes, metrics, reports, W&B runs and printed configs all go through here:
URLs keep their scheme, host, port and path, and lose ``user:password@``, query string and
fragment (signed download URLs carry their token in the query); config values under keys
that name credentials are replaced by :data:`REDACTED`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

REDACTED = "<redacted>"
"""What a credential is shown as."""

_QUERY = re.compile(r"\?[^\s'\"<>]*=[^\s'\"<>)]*")
_USERINFO = re.compile(r"(?<=://)[^/\s'\"<>@]+@")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api_?key|credential|auth)", re.I)


def public_url(url: str) -> str:
    """The URL without ``user:password@``, query and fragment: scheme, host, port and path.

    Signed URLs carry credentials in their query strings, basic-auth URLs before the host.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def redact_urls(text: str) -> str:
    """Drop the query strings and ``user:password@`` of URLs inside a message.

    ``requests`` errors quote the URLs they failed on.
    """
    return _QUERY.sub(f"?{REDACTED}", _USERINFO.sub("", text))


def public_args(args: Sequence[str]) -> list[str]:
    """Command-line arguments safe to record: each URL in them as :func:`public_url` gives it.

    ``--data https://u:p@host/a.zip?sig=...`` becomes ``--data https://host/a.zip``.
    """
    return [_URL.sub(lambda match: public_url(match.group(0)), arg) for arg in args]


def public_config(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a config tree that is safe to show or upload.

    Values of keys that name credentials (``token``, ``secret``, ``password``, ``api_key``,
    ...) become :data:`REDACTED`; strings that are URLs become :func:`public_url`.

    Args:
        tree: nested mappings, lists and scalars (e.g. :func:`imgae_dx_jax.config.to_dict`).

    Returns:
        The cleaned copy.
    """

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if _SECRET_KEY.search(key) and value not in ("", None):
            return REDACTED
        if isinstance(value, list | tuple):
            return [clean(key, v) for v in value]
        if isinstance(value, str) and "://" in value:
            return public_url(value)
        return value

    return {str(k): clean(str(k), v) for k, v in tree.items()}
