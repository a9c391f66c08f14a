"""Signed download URLs of Kaggle datasets, through the official ``kaggle`` client.

The client finds the credentials (``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``~/.kaggle/kaggle.json``
or ``$KAGGLE_CONFIG_DIR/kaggle.json``, ``KAGGLE_API_TOKEN``) and sends the dataset-download
request; Kaggle answers with a redirect to a signed, time-limited URL of the whole-dataset
``archive.zip``, which supports HTTP Range requests. We keep that URL and never download the
body here: :mod:`~imgae_dx_jax.data.http` streams the members that are needed.

``import kaggle`` authenticates at import time (and prints help when it cannot), so the client
is imported only when a ``kaggle`` source is opened.
"""

from __future__ import annotations

import contextlib
import io
import re

import requests

from imgae_dx_jax.data.stores import DataError

DEFAULT_DATASET = "nih-chest-xrays/data"

CREDENTIALS_HELP = (
    "Kaggle credentials not found. Provide them in one of three ways:\n"
    "  1. environment variables KAGGLE_USERNAME and KAGGLE_KEY;\n"
    "  2. the file ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json) containing\n"
    '     {"username": "...", "key": "..."} (kaggle.com -> Settings -> API -> Create New Token);\n'
    "  3. environment variable KAGGLE_API_TOKEN (an API token, or the path of a file holding it).\n"
    "On Colab, store KAGGLE_USERNAME and KAGGLE_KEY as secrets (key icon) and copy them into\n"
    "os.environ with google.colab.userdata.get(...) before training."
)


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
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise DataError(CREDENTIALS_HELP) from None
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
        raise DataError(f"kaggle dataset {owner}/{slug}: HTTP {status}: {reason}") from None
    except requests.RequestException as err:
        raise DataError(f"kaggle dataset {owner}/{slug}: cannot reach Kaggle: {err}") from None
    return response.url
