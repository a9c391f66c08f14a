"""``python -m imgae_dx_jax.evaluate`` (= ``imgae-evaluate`` = ``hatch run evaluate``).

``--run RUN`` re-evaluates a run into ``RUN/eval/``; ``--run A --run B [--out DIR]`` compares
runs on the same test split; ``--source/--data`` evaluate on other data of the same layout:
:func:`imgae_dx_jax.api.compare_runs`, after parsing the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from imgae_dx_jax import api
from imgae_dx_jax.cli import evaluate_parser, run_cli


def run(args: argparse.Namespace) -> int:
    """Run ``imgae-evaluate`` (``imgae evaluate``) with parsed arguments."""
    comparison = api.compare_runs(
        args.run,
        args.out,
        source=args.source,
        data=args.data,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        wandb=args.wandb,
    )
    if len(comparison.models) == 1:  # the summary holds all a one-model table would repeat
        api.print_summary(comparison.models[0].metrics, args.run[0])
        print(f"Report: {comparison.files['report_html']}")
    else:
        api.print_comparison(comparison)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imgae-evaluate`` / ``python -m imgae_dx_jax.evaluate``."""
    return run_cli(run, evaluate_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
