"""Progress bars for the waits a person watches: caching, downloading, training, scoring.

A bar goes to stderr with its rate and ETA, and only where someone can see it: in a terminal
(stderr is a TTY) or in a notebook (tqdm's widget). Where stderr is a file or a pipe -- a batch
job, CI, ``2> train.log`` -- no bar is drawn, so log files hold log lines only.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(
    desc: str,
    total: float | None,
    unit: str,
    *,
    initial: float = 0,
    unit_scale: bool = False,
    leave: bool = True,
) -> Any:
    """A tqdm bar on stderr, drawn only in a terminal or a notebook.

    Args:
        desc: what is being waited for, shown before the bar.
        total: the count at completion; ``None`` when unknown (no ETA then).
        unit: what is counted (``"img"``, ``"step"``, ``"B"``, ...).
        initial: the count already done (a resumed download or epoch).
        unit_scale: show counts and rates with SI prefixes (``12.3MB``, ``4.5MB/s``).
        leave: keep the finished bar on screen (False for short, repeated waits).

    Returns:
        The bar: ``update(n)``, ``set_postfix_str``, ``close()`` (or use it as a context
        manager); a bar that is not drawn accepts the same calls and does nothing.
    """
    return tqdm(
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        unit_scale=unit_scale,
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,  # None: not drawn when stderr is not a TTY (a notebook always draws)
    )
