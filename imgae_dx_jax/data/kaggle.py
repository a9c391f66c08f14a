"""Signed download URLs of Kaggle datasets, through the official ``kaggle`` client.

The client finds the credentials (``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``~/.kaggle/kaggle.json``
or ``$KAGGLE_CONFIG_DIR/kaggle.json``, ``KAGGLE_API_TOKEN``) and sends the dataset-download
request; Kaggle answers with a redirect to a signed, time-limited URL of the whole-dataset
``archive.zip``, which supports HTTP Range requests. We keep that URL and never download the
body here: :mod:`~imgae_dx_jax.data.http` streams the members that are needed.

``import kaggle`` authenticates at import time (and prints help when it cannot), so the client
is imported only when a ``kaggle`` source is opened.

No credential ever leaves this module in a message: errors are scrubbed of every credential
value found in the environment or ``kaggle.json`` and of URL query strings (signed URLs).
:func:`credentials_status` says *where* credentials were found, never what they are.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imgae_dx_jax.errors import DataError
from imgae_dx_jax.redact import redact_urls

log = logging.getLogger(__name__)

DEFAULT_DATASET = "nih-chest-xrays/data"
API_ENDPOINT = "https://api.kaggle.com"
"""The Kaggle API host. Tests point it at a loopback server so that nothing leaves the
machine; ``imgae-config check --kaggle-endpoint`` does the same for the reachability check."""

CREDENTIALS_HELP = (
    "Kaggle credentials not found. Provide them in one of three ways:\n"
    "  1. environment variables KAGGLE_USERNAME and KAGGLE_KEY;\n"
    "  2. the file ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json) containing\n"
    '     {"username": "...", "key": "..."} (kaggle.com -> Settings -> API -> Create New Token);\n'
    "  3. environment variable KAGGLE_API_TOKEN (an API token, or the path of a file holding it).\n"
    "On Colab, store KAGGLE_USERNAME and KAGGLE_KEY as secrets (key icon) and copy them into\n"
    "os.environ with google.colab.userdata.get(...) before training."
)


def config_dir() -> Path:
    """The directory of ``kaggle.json``: ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``."""
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or "~/.kaggle").expanduser()


def permission_warning(path: Path | None = None) -> str | None:
    """A warning when ``kaggle.json`` can be read by the group or others, with the fix.

    The file is never changed here: fixing it is the user's decision.
    """
    path = path or config_dir() / "kaggle.json"
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if os.name == "nt" or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{path} is readable by other users of this machine (mode {stat.S_IMODE(mode):03o}); "
        f"fix it with: chmod 600 {path}"
    )


@dataclass(frozen=True)
class CredentialStatus:
    """Where Kaggle credentials were found (never their values)."""

    found: bool
    sources: tuple[str, ...]
    """Human-readable places, e.g. ``KAGGLE_USERNAME/KAGGLE_KEY environment variables``."""
    warnings: tuple[str, ...] = field(default=())


def credentials_status() -> CredentialStatus:
    """Look for Kaggle credentials the way the client does, without reading them out."""
    sources: list[str] = []
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        sources.append("KAGGLE_USERNAME/KAGGLE_KEY environment variables")
    if os.environ.get("KAGGLE_API_TOKEN"):
        sources.append("KAGGLE_API_TOKEN environment variable")
    warnings: list[str] = []
    path = config_dir() / "kaggle.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            warnings.append(f"{path} is not readable JSON")
        else:
            if isinstance(data, dict) and data.get("username") and data.get("key"):
                sources.append(str(path))
            else:
                warnings.append(f'{path} lacks "username" and "key"')
        warning = permission_warning(path)
        if warning:
            warnings.append(warning)
    token = config_dir() / "access_token"
    if token.is_file():
        sources.append(str(token))
    return CredentialStatus(bool(sources), tuple(sources), tuple(warnings))


def secret_values() -> list[str]:
    """Every credential value this machine offers Kaggle or W&B (to scrub from messages)."""
    values = [
        os.environ.get(name, "")
        for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "WANDB_API_KEY", "KAGGLE_IAP_TOKEN")
    ]
    for path in (config_dir() / "kaggle.json", config_dir() / "access_token"):
        try:
            text = path.read_text()
        except OSError:
            continue
        try:
            data = json.loads(text)
        except ValueError:
            values.append(text.strip())
            continue
        if isinstance(data, dict):
            values.extend(str(v) for k, v in data.items() if k != "username")
    return [v for v in values if len(v) >= 6]


def scrub(text: str) -> str:
    """Remove credential values and URL query strings (signed URLs) from a message."""
    for value in secret_values():
        text = text.replace(value, "<redacted>")
    return redact_urls(text)


def dataset_ref(text: str) -> tuple[str, str]:
    """Split ``owner/dataset`` (the form of ``--data``), or raise :class:`DataError`."""
    match = re.fullmatch(r"([\w.-]+)/([\w.-]+)", text.strip())
    if not match:
        raise DataError(f"kaggle dataset {text!r}: expected owner/dataset, e.g. {DEFAULT_DATASET}")
    return match.group(1), match.group(2)


def archive_url(dataset: str) -> str:
    """Ask Kaggle for the signed URL of the dataset's whole-archive download.

    Raises:
        DataError: missing or refused credentials, an unknown dataset, or no answer.
    """
    owner, slug = dataset_ref(dataset)
    warning = permission_warning()
    if warning:
        log.warning("%s", warning)
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        api = KaggleApi()
        if API_ENDPOINT != "https://api.kaggle.com":  # tests: every request to a local server
            build = api.build_kaggle_client

            def local_client() -> Any:
                client = build()
                client._http_client._endpoint = API_ENDPOINT.rstrip("/")
                return client

            api.build_kaggle_client = local_client
        try:
            api.authenticate()
        except SystemExit:
            raise DataError(CREDENTIALS_HELP) from None
        except requests.RequestException as err:
            raise DataError(
                scrub(f"kaggle dataset {owner}/{slug}: cannot reach Kaggle: {err}")
            ) from None
        except Exception as err:  # e.g. a malformed kaggle.json
            raise DataError(
                scrub(f"Kaggle credentials could not be read: {type(err).__name__}: {err}")
            ) from None
    request = ApiDownloadDatasetRequest()
    request.owner_slug = owner
    request.dataset_slug = slug
    try:
        with api.build_kaggle_client() as client:
            response = client.datasets.dataset_api_client.download_dataset(request)
            response.close()  # only the redirect target is wanted, not the body
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        reason = {
            401: "the credentials were refused (check KAGGLE_USERNAME/KAGGLE_KEY or the token)",
            403: "access denied (accept the dataset's terms on kaggle.com first)",
            404: "no such dataset",
        }.get(status, str(err))
        raise DataError(scrub(f"kaggle dataset {owner}/{slug}: HTTP {status}: {reason}")) from None
    except requests.RequestException as err:
        raise DataError(
            scrub(f"kaggle dataset {owner}/{slug}: cannot reach Kaggle: {err}")
        ) from None
    return response.url
