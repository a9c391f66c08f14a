"""``python -m imgae_dx_jax.train`` (= ``imgae-train`` = ``hatch run train``).

Trains one model family on the normal images of the training patients, stage after stage,
checkpointing everything, then exports the model and evaluates it on the held-out test
patients: :func:`imgae_dx_jax.api.train_and_evaluate`, after parsing the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from imgae_dx_jax import api, distributed
from imgae_dx_jax.cli import overrides_from_args, run_cli, train_parser
from imgae_dx_jax.config import load_config
from imgae_dx_jax.run_dir import default_run_dir


def run(args: argparse.Namespace) -> int:
    """Run ``imgae-train`` (``imgae train``) with parsed arguments."""
    config = load_config(args.config, overrides_from_args(args))
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if not distributed.is_main_process():
        logging.getLogger("imgae_dx_jax").setLevel(logging.WARNING)
    run_dir = args.run_dir or default_run_dir(config)
    metrics = api.train_and_evaluate(config, run_dir, resume=args.resume, overwrite=args.overwrite)
    if metrics is not None:
        api.print_summary(metrics, run_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imgae-train`` / ``python -m imgae_dx_jax.train``."""
    return run_cli(run, train_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
