"""Random access to a remote file over HTTP Range requests, with retries.

:class:`HttpFile` is a :class:`~imgae_dx_jax.data.archive.ByteSource`: ``read_range(a, b)`` is
one ``Range: bytes=a-(b-1)`` GET. Transient failures -- timeouts, dropped connections, short
bodies, 5xx and 429 answers -- are retried with exponential backoff, resuming after the bytes
already received. A URL that stops working with 401/403 (an expired signed URL) is replaced by
asking ``resolve`` for a fresh one, when the caller can (the ``kaggle`` source).

A server that ignores ``Range`` cannot be streamed: :func:`open_url` then downloads the whole
file into the cache directory instead (resumable), says so, and shows the download's progress.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests

from imgae_dx_jax.data.archive import ByteSource, LocalFile
from imgae_dx_jax.errors import DataError
from imgae_dx_jax.progress import progress_bar
from imgae_dx_jax.redact import public_url, redact_urls

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_EXPIRED = (401, 403)
_MAX_REFRESHES = 3
_CHUNK = 2**20
_T = TypeVar("_T")


class RangeNotSupportedError(DataError):
    """The server answered a Range request with the whole file."""


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, a short body)."""


class HttpFile:
    """A remote file read with HTTP Range requests (thread-safe; a session per thread)."""

    def __init__(
        self,
        resolve: Callable[[], str],
        *,
        retries: int,
        timeout: float,
        backoff: float = 0.5,
        can_refresh: bool = False,
    ) -> None:
        """Open the URL ``resolve()`` returns and learn its size with a one-byte Range request.

        Args:
            resolve: returns the URL; called again when the URL expires and ``can_refresh``.
            retries: attempts after the first for each transient failure.
            timeout: seconds to wait for a connection or for data.
            backoff: first retry delay in seconds; doubles on each further retry.
            can_refresh: whether a 401/403 answer means "ask ``resolve`` for a new URL".

        Raises:
            RangeNotSupportedError: the server ignores Range (its size is in the message).
            DataError: the URL cannot be read.
        """
        self._resolve = resolve
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.can_refresh = can_refresh
        self._lock = threading.Lock()
        self._local = threading.local()
        self.url = resolve()
        self.description = f"url {public_url(self.url)}"
        self.size = -1
        self.size = self._probe()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _probe(self) -> int:
        def attempt(url: str) -> int:
            with self._session().get(
                url, headers={"Range": "bytes=0-0"}, stream=True, timeout=self.timeout
            ) as response:
                self._check(response)
                if response.status_code == 200:
                    length = int(response.headers.get("Content-Length", -1))
                    raise RangeNotSupportedError(
                        f"{public_url(url)} ignores HTTP Range requests (size {length})"
                    )
                return _total_size(response)

        return self._with_retries(attempt, "open")

    def read_range(self, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)``, resuming after partial answers."""
        received = bytearray()

        def attempt(url: str) -> bytes:
            first = start + len(received)
            with self._session().get(
                url,
                headers={"Range": f"bytes={first}-{end - 1}"},
                stream=True,
                timeout=self.timeout,
            ) as response:
                self._check(response)
                if response.status_code != 206:
                    raise DataError(
                        f"{self.description} stopped honouring Range requests "
                        f"(HTTP {response.status_code})"
                    )
                if _content_range(response)[0] != first:
                    raise _Transient(f"server answered another range than bytes {first}-")
                for chunk in response.iter_content(_CHUNK):
                    received.extend(chunk[: end - start - len(received)])
            if len(received) < end - start:
                raise _Transient(f"short body: {len(received)} of {end - start} bytes")
            return bytes(received)

        if end <= start:
            return b""
        return self._with_retries(attempt, f"bytes {start}-{end - 1}")

    def _check(self, response: requests.Response) -> None:
        status = response.status_code
        if status in _EXPIRED:
            raise _Expired(status)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}")
        if status >= 400:
            raise DataError(f"{self.description}: HTTP {status} {response.reason}")

    def _with_retries(self, attempt: Callable[[str], _T], what: str) -> _T:
        failures = refreshes = 0
        while True:
            url = self.url
            try:
                return attempt(url)
            except _Expired as err:
                if not self.can_refresh or refreshes >= _MAX_REFRESHES:
                    raise DataError(
                        f"{self.description}: HTTP {err.status} (access denied"
                        + (", or the signed URL expired)" if self.can_refresh else ")")
                    ) from None
                refreshes += 1
                self._refresh(url)
            except (*_TRANSIENT, _Transient) as err:
                failures += 1
                if failures > self.retries:
                    raise DataError(
                        f"{self.description}: reading {what} failed {failures} times; "
                        f"last error: {redact_urls(str(err))}"
                    ) from None
                delay = min(self.backoff * 2 ** (failures - 1), 30.0)
                log.warning(
                    "%s: %s (%s); retrying in %.1fs",
                    self.description,
                    what,
                    redact_urls(str(err)),
                    delay,
                )
                time.sleep(delay)

    def _refresh(self, stale: str) -> None:
        with self._lock:
            if self.url != stale:
                return  # another thread already replaced it
            log.info("%s: the signed URL expired; requesting a new one", self.description)
            fresh = self._resolve()
            self.url = fresh
        if self.size >= 0:
            size = self._probe()
            if size != self.size:
                raise DataError(
                    f"{self.description} changed size ({self.size} -> {size} bytes) while "
                    "being read; rerun to start over"
                )

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        del state["_lock"], state["_local"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()


class _Expired(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _content_range(response: requests.Response) -> tuple[int, int, int]:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        raise _Transient(f"missing or bad Content-Range {response.headers.get('Content-Range')!r}")
    first, last, total = (int(g) for g in match.groups())
    return first, last, total


def _total_size(response: requests.Response) -> int:
    return _content_range(response)[2]


def open_url(
    resolve: Callable[[], str],
    cache_dir: Path,
    *,
    retries: int,
    timeout: float,
    can_refresh: bool = False,
) -> ByteSource:
    """Open a remote file for random access: Range requests, else a local download.

    Args:
        resolve: returns the URL (again after an expiry when ``can_refresh``).
        cache_dir: where a server without Range support makes us download the file.
        retries: retries of each transient failure.
        timeout: seconds to wait for a connection or for data.
        can_refresh: whether 401/403 means "ask ``resolve`` for a new URL".

    Returns:
        An :class:`HttpFile`, or a :class:`~imgae_dx_jax.data.archive.LocalFile` of the download.
    """
    try:
        return HttpFile(resolve, retries=retries, timeout=timeout, can_refresh=can_refresh)
    except RangeNotSupportedError as err:
        url = resolve()
        target = cache_dir / "downloads" / _download_name(url)
        log.warning(
            "%s; downloading the whole file to %s instead (resumable: rerun to continue)",
            err,
            target,
        )
        download(url, target, retries=retries, timeout=timeout)
        return LocalFile(target)


def _download_name(url: str) -> str:
    public = public_url(url)
    digest = hashlib.sha256(public.encode()).hexdigest()[:12]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(public).path).name) or "download"
    return f"{digest}-{base}"


def download(url: str, target: Path, *, retries: int, timeout: float, backoff: float = 0.5) -> None:
    """Download ``url`` to ``target`` through ``target.part``, resuming what is already there.

    Resumes with a Range request (a server that ignores it sends the whole file again, which
    then replaces the partial one). The file appears at ``target`` only when complete.

    Raises:
        DataError: not enough disk space, or the download keeps failing.
    """
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures = 0
    with requests.Session() as session:
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                headers = {"Range": f"bytes={have}-"} if have else {}
                with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
                    if response.status_code >= 400:
                        if response.status_code == 429 or response.status_code >= 500:
                            raise _Transient(f"HTTP {response.status_code}")
                        raise DataError(f"{public_url(url)}: HTTP {response.status_code}")
                    resumed = response.status_code == 206
                    total = (
                        _total_size(response)
                        if resumed
                        else int(response.headers.get("Content-Length", -1))
                    )
                    _check_space(part.parent, total - have if resumed else max(total, 0))
                    with (
                        part.open("ab" if resumed else "wb") as out,
                        progress_bar(
                            f"downloading {target.name}",
                            total if total >= 0 else None,
                            "B",
                            initial=have if resumed else 0,
                            unit_scale=True,
                        ) as bar,
                    ):
                        for chunk in response.iter_content(_CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                size = part.stat().st_size
                if total >= 0 and size != total:
                    raise _Transient(f"short download: {size} of {total} bytes")
                part.replace(target)
                return
            except (*_TRANSIENT, _Transient) as err:
                failures += 1
                if failures > retries:
                    raise DataError(
                        f"downloading {public_url(url)} failed {failures} times; last error: "
                        f"{redact_urls(str(err))}; rerun to resume from {part}"
                    ) from None
                time.sleep(min(backoff * 2 ** (failures - 1), 30.0))


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DataError(
            f"not enough disk space in {directory} to download the archive: {needed / 1e9:.1f} GB "
            f"needed, {free / 1e9:.1f} GB free (set data.cache_dir / --cache-dir elsewhere)"
        )
