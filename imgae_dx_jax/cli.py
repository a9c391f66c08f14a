"""The command line: argument parsers, exit codes, printing, and ``imgae-config``.

Each command's entry point is its thin module (``imgae-train`` = :func:`imgae_dx_jax.train.main`,
``imgae-evaluate`` = :func:`imgae_dx_jax.evaluate.main`, ``imgae-predict`` =
:func:`imgae_dx_jax.predict.main`), which parses with a parser of this module, calls the
library (:mod:`imgae_dx_jax.api`) and runs under :func:`run_cli`, so that a command imports
only what it runs (``imgae-predict`` never loads the trainer or the evaluator). ``imgae``
(``python -m imgae_dx_jax``) has them all as sub-commands, ``imgae train ...`` =
``imgae-train ...`` (:data:`IMGAE_COMMANDS`), and imports only the one it runs.

User errors (a bad config, missing data, an unusable run directory, a NaN loss, a checkpoint
that cannot be written) end with one clear message and exit status 2; ``--debug`` shows the
traceback. A signal that stops training after its checkpoint exits with 128 + the signal
(130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from imgae_dx_jax import __version__
from imgae_dx_jax.config import load_config, parse_stages, to_dict
from imgae_dx_jax.data import kaggle
from imgae_dx_jax.data.sources import source_stages
from imgae_dx_jax.errors import ImgaeError, Interrupted
from imgae_dx_jax.logs import setup_logging
from imgae_dx_jax.redact import public_config
from imgae_dx_jax.results import Prediction
from imgae_dx_jax.schema import MODELS, PRECISIONS, SOURCES, WANDB_MODES
from imgae_dx_jax.tracking import wandb_credentials, wandb_server


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def train_parser() -> argparse.ArgumentParser:
    """Arguments of ``imgae-train``."""
    parser = argparse.ArgumentParser(
        prog="imgae-train",
        description="Train an anomaly-detection autoencoder on normal chest X-rays, then "
        "evaluate it on held-out patients.",
    )
    parser.add_argument("--model", choices=MODELS, help="model family (default: ae)")
    parser.add_argument("--stage", help="NIH stage(s): images_001, a comma list, or all")
    parser.add_argument("--config", help="YAML config file (path or packaged name)")
    parser.add_argument("--source", choices=SOURCES, help="where the images are (default: sample)")
    parser.add_argument("--data", help="where: archive ZIP, folder, URL or Kaggle dataset slug")
    parser.add_argument(
        "--cache-dir", help="directory of decoded stage caches (default ~/.cache/imgae_dx_jax)"
    )
    parser.add_argument("--epochs", type=int, help="epochs per stage (train.epochs)")
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimiser steps in total, mid-epoch if need be (train.max_steps; "
        "0: epochs x steps per epoch)",
    )
    parser.add_argument(
        "--image-size", type=int, help="side of the square training images in pixels"
    )
    parser.add_argument(
        "--batch-size", type=int, help="global training batch size (train.batch_size)"
    )
    parser.add_argument("--seed", type=int, help="training seed: initialisation and data order")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="training compute dtype: auto (default: bf16 where the devices have fast "
        "bfloat16, float32 elsewhere), float32, or bf16 (bfloat16 compute, float32 parameters "
        "and optimiser state)",
    )
    parser.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<model>; rerunning continues it)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set model.unet.noise_std=0.1",
    )
    parser.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="auto: continue from the run directory's checkpoints (default); never: start fresh",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --resume never: delete an existing run directory first",
    )
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        help="Weights & Biases logging (default: tracking.wandb, offline)",
    )
    group = parser.add_argument_group(
        "several hosts",
        "Give all three on every process to start jax.distributed. SLURM jobs and multi-host "
        "TPU slices are detected without them.",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, help="number of processes taking part")
    group.add_argument("--process-id", type=int, help="index of this process (0 .. N-1)")
    _common(parser)
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    """Arguments of ``imgae-evaluate``."""
    parser = argparse.ArgumentParser(
        prog="imgae-evaluate",
        description="Score trained runs on their held-out test patients, compare them and "
        "write metrics.json, scores.csv, figures and report.md/report.html.",
    )
    parser.add_argument(
        "--run",
        type=Path,
        action="append",
        required=True,
        help="run directory of imgae-train; repeat to compare runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=(
            "output directory (default: RUN/eval for one run, RUN/eval-SOURCE on other "
            "data, reports/A-vs-B for several)"
        ),
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help="evaluate on other data of the NIH layout instead of the run's own",
    )
    parser.add_argument(
        "--data",
        help=(
            "where: archive ZIP, folder, URL or Kaggle dataset slug (alone: other data of the "
            "run's own source)"
        ),
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples of patients for the 95%% CIs (>= 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        help="log to Weights & Biases (default: the first run's "
        "tracking.wandb, offline unless changed)",
    )
    _common(parser)
    return parser


def predict_parser() -> argparse.ArgumentParser:
    """Arguments of ``imgae-predict``."""
    parser = argparse.ArgumentParser(
        prog="imgae-predict",
        description="Score chest X-ray files (PNG/JPEG, any size) with a trained run: "
        "normal/abnormal at the run's validation threshold, heatmap overlays, a CSV.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IMAGE_OR_DIR",
        help="image files or directories (searched recursively)",
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="trained and evaluated run directory"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions"),
        help="output directory (default: predictions)",
    )
    _common(parser)
    return parser


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Turn the convenience flags into ``key=value`` overrides (applied before ``--set``)."""
    flags: list[tuple[str, Any]] = [
        ("model.name", args.model),
        ("data.source", args.source),
        ("data.path", args.data),
        ("data.cache_dir", args.cache_dir),
        ("train.epochs", args.epochs),
        ("train.max_steps", args.max_steps),
        ("data.image_size", args.image_size),
        ("train.batch_size", args.batch_size),
        ("train.seed", args.seed),
        ("train.precision", getattr(args, "precision", None)),
        ("tracking.wandb", args.wandb),
    ]
    out = [f"{key}={value}" for key, value in flags if value is not None]
    if args.stage is not None:
        out.append(f"data.stages=[{','.join(parse_stages(args.stage))}]")
    return out + list(args.set)


def run_cli(
    main: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> int:
    """Parse, run ``main``, and turn user errors into one message and their exit status.

    Every :class:`~imgae_dx_jax.errors.ImgaeError` ends with its ``exit_code`` (2, or
    128 + the signal for an interrupted training run); ``--debug`` re-raises it instead.
    """
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        return main(args)
    except Interrupted as err:
        print(
            f"{parser.prog}: {err}; checkpoint saved, run the same command to resume",
            file=sys.stderr,
        )
        return err.exit_code
    except ImgaeError as err:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def print_predictions(results: Sequence[Prediction], out_dir: Path) -> None:
    """Print one line per predicted file and the counts of each verdict."""
    for p in results:
        verdict = "unreadable" if p.error else "abnormal" if p.abnormal else "normal"
        score = "" if p.score is None else f"{p.score:.5g}"
        print(f"{verdict:10s} {score:>10s}  {p.path}" + (f"  ({p.error})" if p.error else ""))
    flagged = sum(bool(p.abnormal) for p in results)
    unreadable = sum(bool(p.error) for p in results)
    print(
        f"\n{len(results)} images: {flagged} abnormal, "
        f"{len(results) - flagged - unreadable} normal, {unreadable} unreadable. "
        f"Overlays and predictions.csv in {out_dir}"
    )


def config_parser(prog: str = "imgae-config") -> argparse.ArgumentParser:
    """Arguments of ``imgae-config`` (``prog`` names it in its sub-commands' usage)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show, validate and check configurations and credentials.",
    )
    _common(parser)
    sub_debug = argparse.ArgumentParser(add_help=False)
    sub_debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    layered = argparse.ArgumentParser(add_help=False)
    layered.add_argument("--config", help="YAML config file (path or packaged name)")
    layered.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="show, validate or check"
    )
    commands.add_parser(
        "show",
        parents=[layered, sub_debug],
        help="print the resolved configuration as YAML (defaults, then --config, then --set)",
    )
    validate = commands.add_parser(
        "validate", parents=[sub_debug], help="check a config file; exit 0 when valid, else 2"
    )
    validate.add_argument("file", help="YAML config file (path or packaged name)")
    validate.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    check = commands.add_parser(
        "check",
        parents=[layered, sub_debug],
        help="report whether Kaggle credentials and W&B are configured and reachable "
        "(secrets are never printed)",
    )
    check.add_argument(
        "--kaggle-endpoint",
        default=None,
        metavar="URL",
        help="Kaggle API host to try (default: https://api.kaggle.com)",
    )
    check.add_argument(
        "--wandb-endpoint",
        default=None,
        metavar="URL",
        help="W&B server to try (default: $WANDB_BASE_URL or https://api.wandb.ai)",
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per reachability check (default 5)"
    )
    check.add_argument("--offline", action="store_true", help="skip the reachability checks")
    return parser


def _show(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    print(yaml.safe_dump(public_config(to_dict(config)), sort_keys=False), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set)
    print(
        f"{args.file}: valid ({config.model.name} model, source {config.data.source}, "
        f"{config.data.image_size}px, stages {','.join(source_stages(config.data))})"
    )
    return 0


def _reach(url: str, timeout: float) -> tuple[bool, str]:
    """HEAD ``url`` without credentials; never raises."""
    try:
        response = requests.head(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException as err:
        return False, f"cannot reach {url} (offline or no network?): {type(err).__name__}"
    return True, f"{url} answered HTTP {response.status_code}"


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    status = kaggle.credentials_status()
    needs_kaggle = config.data.source == "kaggle"
    print(f"data source: {config.data.source}" + (" (needs Kaggle)" if needs_kaggle else ""))
    if status.found:
        print(f"Kaggle credentials: found ({'; '.join(status.sources)})")
    else:
        need = "needed" if needs_kaggle else "needed only for --source kaggle"
        print(f"Kaggle credentials: not found ({need})")
        if needs_kaggle:
            print("  " + kaggle.CREDENTIALS_HELP.replace("\n", "\n  "))
    for warning in status.warnings:
        print(f"  warning: {warning}")
    mode = config.tracking.wandb
    where = config.tracking.dir or "<run dir>"
    print(
        f"W&B: {mode}"
        + {
            "offline": f" (local files under {where}/wandb, no network or login needed; "
            "upload later with `wandb sync`)",
            "online": " (needs `wandb login` and the network)",
            "disabled": " (nothing is logged to W&B; metrics.jsonl is written anyway)",
        }[mode]
    )
    found = wandb_credentials()
    if found:
        print(f"W&B credentials: found ({found})")
    else:
        need = "needed" if mode == "online" else "needed only for online mode"
        print(f"W&B credentials: not found ({need}: run `wandb login`)")
    if args.offline:
        print("reachability: not checked (--offline)")
        return 0
    kaggle_url = args.kaggle_endpoint or kaggle.API_ENDPOINT
    wandb_url = args.wandb_endpoint or wandb_server()
    for name, url in (("Kaggle API", kaggle_url), ("W&B server", wandb_url)):
        ok, detail = _reach(url, args.timeout)
        print(f"{name}: {'reachable' if ok else 'not reachable'} ({kaggle.scrub(detail)})")
    return 0


def config_command(args: argparse.Namespace) -> int:
    """Run ``imgae-config`` (``imgae config``) with parsed arguments: show, validate or check."""
    commands = {"show": _show, "validate": _validate, "check": _check}
    return commands[args.command](args)


def config_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imgae-config``: ``show``, ``validate FILE``, ``check``."""
    return run_cli(config_command, config_parser(), argv)


IMGAE_COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], str, str]] = {
    "train": (
        train_parser,
        "train a model on normal images, then evaluate it (= imgae-train)",
        "imgae_dx_jax.train:run",
    ),
    "evaluate": (
        evaluate_parser,
        "score trained runs on held-out patients and compare them (= imgae-evaluate)",
        "imgae_dx_jax.evaluate:run",
    ),
    "predict": (
        predict_parser,
        "score new X-ray files with a trained run (= imgae-predict)",
        "imgae_dx_jax.predict:run",
    ),
    "config": (
        lambda: config_parser("imgae config"),
        "show, validate and check configs and credentials (= imgae-config)",
        "imgae_dx_jax.cli:config_command",
    ),
}
"""The sub-commands of ``imgae``: name -> (the parser of its ``imgae-X`` command, a summary,
the ``module:function`` that runs it on the parsed arguments)."""


def imgae_parser() -> argparse.ArgumentParser:
    """Arguments of ``imgae``: ``imgae train ...`` takes those of ``imgae-train ...``, and so on.

    The sub-command's name is ``args.program``.
    """
    parser = argparse.ArgumentParser(
        prog="imgae",
        description="Unsupervised anomaly detection in chest X-rays: train, evaluate, predict, "
        "configure. `imgae COMMAND --help` lists a command's arguments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="program", metavar="COMMAND", required=True, help="what to do"
    )
    for name, (same, summary, _) in IMGAE_COMMANDS.items():
        template = same()
        commands.add_parser(
            name,
            parents=[template],
            add_help=False,  # the template's -h/--help is copied
            description=template.description,
            help=summary,
        )
    return parser
