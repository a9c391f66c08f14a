"""``imgae`` (= ``python -m imgae_dx_jax``): ``imgae train|evaluate|predict|config ...``.

``imgae train ...`` takes the arguments of ``imgae-train ...`` and runs the same function, and
so on (:data:`imgae_dx_jax.cli.IMGAE_COMMANDS`). Only the chosen sub-command's module is
imported, so ``imgae predict`` stays as light as ``imgae-predict``: neither the trainer nor
the evaluator is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from imgae_dx_jax.cli import IMGAE_COMMANDS, imgae_parser, run_cli


def _run(args: argparse.Namespace) -> int:
    module, _, function = IMGAE_COMMANDS[args.program][2].partition(":")
    command = getattr(importlib.import_module(module), function)
    code: int = command(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imgae`` / ``python -m imgae_dx_jax``."""
    return run_cli(_run, imgae_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
