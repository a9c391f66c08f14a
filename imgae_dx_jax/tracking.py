"""Experiment tracking with Weights & Biases, behind one small :class:`Tracker`.

``offline`` (the default) writes a complete W&B run under ``<dir>/wandb/offline-run-*`` with
no network and no login prompt; ``wandb sync <that directory>`` uploads it later. ``online``
needs credentials that ``wandb login`` stored (it never prompts: without them it stops with
one message). ``disabled`` makes every method a no-op and never imports wandb. The local
``metrics.jsonl`` and console summary do not depend on any of this.

Configs are logged without secrets: values under keys that look like credentials are
replaced, and URLs lose their user info and query string (signed download URLs).
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import numpy as np

from imgae_dx_jax.config import to_dict
from imgae_dx_jax.errors import TrackingError
from imgae_dx_jax.redact import public_args, public_config
from imgae_dx_jax.schema import WANDB_MODES, Config, TrackingConfig

WANDB_SERVER = "https://api.wandb.ai"
"""The W&B server when ``WANDB_BASE_URL`` names no other."""


def wandb_server() -> str:
    """The W&B server URL: ``$WANDB_BASE_URL``, or :data:`WANDB_SERVER`."""
    return os.environ.get("WANDB_BASE_URL") or WANDB_SERVER


def wandb_credentials() -> str | None:
    """Where W&B credentials are, in words; None when there are none (never the key itself).

    ``WANDB_API_KEY``, or the ``~/.netrc`` entry that ``wandb login`` wrote for
    :func:`wandb_server`.
    """
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY environment variable"
    host = urlsplit(wandb_server()).hostname or ""
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        if netrc.netrc(str(path)).authenticators(host):
            return f"{path} entry for {host}"
    except (OSError, netrc.NetrcParseError):
        pass
    return None


def resource_metrics() -> dict[str, float]:
    """Host memory and accelerator memory of this process, for logging next to the losses.

    Returns:
        ``host_rss_mb`` (resident set size of this process) and, where the backend reports
        them (GPU/TPU, not CPU), ``device_memory_mb`` and ``device_peak_memory_mb`` of the
        first local device.
    """
    import jax
    import psutil

    out = {"host_rss_mb": psutil.Process().memory_info().rss / 2**20}
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_in_use" in stats:
        out["device_memory_mb"] = stats["bytes_in_use"] / 2**20
    if "peak_bytes_in_use" in stats:
        out["device_peak_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


class Tracker:
    """One W&B run: ``start`` -> ``log`` / ``log_images`` / ``log_table`` -> ``finish``.

    Also a context manager (``with Tracker(...) as t: t.start(...)`` finishes on exit, marking
    the W&B run as failed when an exception leaves the block).
    """

    def __init__(
        self,
        mode: str = "offline",
        *,
        project: str = "imgae-dx-jax",
        entity: str = "",
        directory: str | Path = "",
        job_type: str = "train",
    ) -> None:
        """Describe the W&B run; nothing is created before :meth:`start`.

        Args:
            mode: ``online``, ``offline`` or ``disabled``.
            project: W&B project.
            entity: W&B user or team; empty for the account's default.
            directory: where W&B writes ``wandb/``; empty for the ``run_dir`` of :meth:`start`.
            job_type: ``train`` or ``evaluate`` (shown in the W&B UI).

        Raises:
            TrackingError: for an unknown mode.
        """
        if mode not in WANDB_MODES:
            raise TrackingError(f"--wandb {mode!r}: choose one of {', '.join(WANDB_MODES)}")
        self.mode = mode
        self.project = project
        self.entity = entity
        self.directory = Path(directory) if str(directory) else None
        self.job_type = job_type
        self._run: Any = None

    @classmethod
    def from_config(
        cls, tracking: TrackingConfig, *, job_type: str = "train", mode: str | None = None
    ) -> Tracker:
        """Build a tracker from the ``tracking`` config section.

        Args:
            tracking: ``config.tracking``.
            job_type: ``train`` or ``evaluate``.
            mode: overrides ``tracking.wandb`` (e.g. from a ``--wandb`` flag) when given.

        Returns:
            The (not yet started) tracker.
        """
        return cls(
            mode or tracking.wandb,
            project=tracking.project,
            entity=tracking.entity,
            directory=tracking.dir,
            job_type=job_type,
        )

    @property
    def enabled(self) -> bool:
        """Whether a W&B run is open (started, not disabled, not finished)."""
        return self._run is not None

    @property
    def run_dir(self) -> Path | None:
        """The local W&B run directory (``.../wandb/offline-run-*``) while a run is open."""
        return Path(self._run.dir).parent if self._run is not None else None

    def start(self, config: Config | Mapping[str, Any], run_dir: Path) -> None:
        """Open the W&B run, named after ``run_dir``, and record the config (no secrets).

        Args:
            config: the run's :class:`~imgae_dx_jax.schema.Config`, or any mapping.
            run_dir: the run (or report) directory; W&B writes ``<run_dir>/wandb/`` unless a
                directory was configured.

        Raises:
            TrackingError: when ``online`` has no stored credentials, or W&B fails to start.
        """
        if self.mode == "disabled" or self._run is not None:
            return
        import wandb

        tree = to_dict(config) if isinstance(config, Config) else dict(config)
        directory = (self.directory or Path(run_dir)).expanduser().absolute()
        directory.mkdir(parents=True, exist_ok=True)
        if self.mode == "online" and not wandb.login(prompt=False, verify=False):
            raise TrackingError(
                "W&B online mode needs stored credentials: run `wandb login` once, or use "
                "--wandb offline (sync later with `wandb sync`) or --wandb disabled"
            )
        settings = wandb.Settings(
            silent=True, console="off", disable_git=True, save_code=False, disable_code=True
        )
        # W&B records the command line (sys.argv) with the run: a signed --data URL would be
        # uploaded whole, so it sees the arguments cleaned while the run starts.
        argv = sys.argv
        sys.argv = [*argv[:1], *public_args(argv[1:])]
        try:
            self._run = wandb.init(
                mode=cast(Literal["online", "offline", "disabled"], self.mode),
                project=self.project,
                entity=self.entity or None,
                dir=str(directory),
                name=Path(run_dir).name,
                job_type=self.job_type,
                config=public_config(tree),
                settings=settings,
                reinit="create_new",
            )
        except wandb.Error as err:
            raise TrackingError(f"W&B could not start a {self.mode} run: {err}") from None
        finally:
            sys.argv = argv

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalars (numbers, or 0-d arrays) at ``step``; keys may use ``/`` to group.

        Args:
            metrics: name -> value.
            step: the training step; must not decrease between calls (W&B's rule).
        """
        if self._run is None:
            return
        values = {
            k: v.item() if isinstance(v, np.ndarray | np.generic) else v for k, v in metrics.items()
        }
        self._run.log(values, step=step)

    def log_images(
        self,
        images: Mapping[str, np.ndarray | Path],
        step: int | None = None,
        captions: Mapping[str, str] | None = None,
    ) -> None:
        """Log images: uint8 or [0, 1] float arrays ([H, W], [H, W, 1|3|4]) or PNG files.

        Args:
            images: name -> image.
            step: as in :meth:`log`.
            captions: optional name -> caption.
        """
        if self._run is None:
            return
        import wandb

        captions = captions or {}
        logged = {}
        for key, image in images.items():
            if isinstance(image, np.ndarray):
                array = np.asarray(image)
                if array.dtype != np.uint8:
                    array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
                data: Any = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
            else:
                data = str(image)
            logged[key] = wandb.Image(data, caption=captions.get(key))
        self._run.log(logged, step=step)

    def log_table(
        self,
        key: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        """Log a table (e.g. per-finding AUROC) under ``key``.

        Args:
            key: table name.
            columns: column names.
            rows: one sequence of values per row (numbers, strings or None).
            step: as in :meth:`log`.
        """
        if self._run is None:
            return
        import wandb

        self._run.log(
            {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step
        )

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set final values of the run (shown in the W&B run table), e.g. the test AUROC."""
        if self._run is None:
            return
        self._run.summary.update(dict(values))

    def finish(self, exit_code: int = 0) -> None:
        """Close the run and flush it to disk (and to W&B when online); safe to call twice.

        Args:
            exit_code: 0 for success; anything else marks the W&B run as failed.
        """
        if self._run is None:
            return
        run, self._run = self._run, None
        run.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if kind is None else 1)
