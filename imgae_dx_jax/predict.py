"""Prediction: score new chest X-ray files with a trained run, save heatmap overlays.

``imgae-predict IMAGE_OR_DIR... --run RUN --out DIR`` (= ``python -m imgae_dx_jax.predict``
= ``hatch run predict``) decodes each PNG or JPEG (grayscale, RGB or RGBA, any size) to the
run's single-channel training size, computes its anomaly map and the image score chosen on the
run's validation split, calls it abnormal iff the score reaches the threshold chosen there
(:func:`imgae_dx_jax.run_dir.load_calibration`, written by evaluation), and writes per image
a heatmap overlay PNG at the image's own aspect ratio, plus ``predictions.csv``. Directories are
searched recursively; unreadable files are reported in the CSV and skipped.

It needs the run directory, the export, the batched scorer and the overlay, nothing heavier:
neither the evaluator nor matplotlib's pyplot is imported.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import restore_model
from imgae_dx_jax.cli import predict_parser, print_predictions, run_cli
from imgae_dx_jax.data.images import ImageDecodeError, decode_image, to_grayscale_uint8
from imgae_dx_jax.data.nih import IMAGE_SUFFIXES
from imgae_dx_jax.errors import PredictError
from imgae_dx_jax.inference import Scorer
from imgae_dx_jax.report.overlay import overlay_rgb
from imgae_dx_jax.results import Prediction
from imgae_dx_jax.run_dir import Calibration
from imgae_dx_jax.runtime import setup_compilation_cache

log = logging.getLogger(__name__)

MAX_OVERLAY_SIDE = 1024
"""Overlays of larger images are downscaled to this longest side."""


def find_images(inputs: Sequence[Path], skip: Path | None = None) -> list[Path]:
    """Expand files and directories (recursively) into image files, in a stable order.

    A dangling symlink with an image suffix is kept, so that it is reported unreadable.

    Args:
        inputs: image files and directories.
        skip: a directory whose files a searched directory holding it below itself does not
            contribute: the output directory, so that the overlays of an earlier prediction
            (``imgae-predict . --out predictions``) are not scored as X-rays.

    Raises:
        PredictError: for a path that does not exist, or when no image file is found.
    """
    found: list[Path] = []
    skipped = skip.expanduser().resolve() if skip is not None else None
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            root = path.resolve()
            below = skipped
            if below is not None and (below == root or not below.is_relative_to(root)):
                below = None
            found += sorted(
                p
                for p in path.rglob("*")
                if (p.is_file() or (p.is_symlink() and not p.exists()))  # dangling: unreadable
                and p.suffix.lower() in IMAGE_SUFFIXES
                and (below is None or not p.resolve().is_relative_to(below))
            )
        elif path.is_file():
            found.append(path)
        else:
            raise PredictError(f"{path}: no such file or directory")
    if not found:
        raise PredictError(f"no .png/.jpg/.jpeg files in {', '.join(map(str, inputs))}")
    return found


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def display_image(data: bytes) -> Image.Image:
    """The file as 8-bit grayscale at its own aspect ratio, longest side <= 1024 pixels."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        gray = to_grayscale_uint8(image)
    gray.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE), Image.Resampling.BILINEAR)
    return gray


def write_overlay(
    data: bytes, amap: np.ndarray, score: float, calibration: Calibration, path: Path
) -> None:
    """Save the anomaly map over the original image, with the score and verdict below it."""
    gray = display_image(data)
    resized = Image.fromarray(amap.astype(np.float32), mode="F").resize(
        gray.size, Image.Resampling.BILINEAR
    )
    blended = Image.fromarray(
        overlay_rgb(np.asarray(gray), np.asarray(resized), calibration.map_scale)
    )
    strip = 18
    canvas = Image.new("RGB", (blended.width, blended.height + strip), "black")
    canvas.paste(blended, (0, 0))
    verdict = "ABNORMAL" if score >= calibration.threshold else "normal"
    ImageDraw.Draw(canvas).text(
        (4, blended.height + 3),
        f"{verdict}  score {score:.4g}  (threshold {calibration.threshold:.4g})",
        fill="white",
    )
    canvas.save(path)


def _unique(path: Path, taken: set[Path]) -> Path:
    candidate, n = path, 2
    while candidate in taken:
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    taken.add(candidate)
    return candidate


def predict(inputs: Sequence[Path], run_dir: Path, out_dir: Path) -> list[Prediction]:
    """Score image files with a trained, evaluated run and write overlays and a CSV.

    Args:
        inputs: image files and/or directories (searched recursively for PNG/JPEG).
        run_dir: the run directory (its ``export/`` is used).
        out_dir: where ``<name>_overlay.png`` files and ``predictions.csv`` go.

    Returns:
        One prediction per input file, in input order.

    Raises:
        RunError: when the run is not trained or not evaluated.
        PredictError: for missing inputs, or when no file could be read.
        ConfigError: when ``out_dir`` cannot be created.
    """
    files = find_images(inputs, skip=out_dir)
    config = rundir.load_export_config(run_dir)
    calibration = rundir.load_calibration(run_dir)
    rundir.make_out_dir(out_dir)
    setup_compilation_cache(config)
    scorer = Scorer(restore_model(run_dir, config), config, calibration.score)
    size = config.data.image_size
    taken: set[Path] = set()
    results: list[Prediction] = []
    for chunk in _chunks(files, scorer.batch_size):
        readable: list[tuple[Path, bytes, np.ndarray]] = []
        for path in chunk:
            try:
                data = path.read_bytes()
                readable.append((path, data, decode_image(data, size)))
            except (ImageDecodeError, OSError) as err:
                results.append(Prediction(path, None, None, None, str(err)))
        if not readable:
            continue
        inference = scorer(np.stack([image for *_, image in readable])[..., None], keep_maps=True)
        assert inference.maps is not None
        for (path, data, _), score, amap in zip(
            readable, inference.scores, inference.maps, strict=True
        ):
            overlay = _unique(out_dir / f"{path.stem}_overlay.png", taken)
            write_overlay(data, amap, float(score), calibration, overlay)
            results.append(
                Prediction(path, float(score), bool(score >= calibration.threshold), overlay)
            )
    order = {path: i for i, path in enumerate(files)}
    results.sort(key=lambda p: order[p.path])
    write_predictions_csv(out_dir / "predictions.csv", results, calibration.threshold)
    if all(p.error for p in results):
        raise PredictError(
            f"none of the {len(results)} files could be read "
            f"(first: {results[0].path}: {results[0].error})"
        )
    return results


def write_predictions_csv(path: Path, results: Sequence[Prediction], threshold: float) -> None:
    """One row per input: image, score, threshold, prediction, overlay, error."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "score", "threshold", "prediction", "overlay", "error"])
        for p in results:
            prediction = "" if p.abnormal is None else "abnormal" if p.abnormal else "normal"
            writer.writerow(
                [
                    str(p.path),
                    "" if p.score is None else f"{p.score:.8g}",
                    f"{threshold:.8g}",
                    prediction,
                    p.overlay or "",
                    p.error or "",
                ]
            )


def run(args: argparse.Namespace) -> int:
    """Run ``imgae-predict`` (``imgae predict``) with parsed arguments."""
    print_predictions(predict(args.inputs, args.run, args.out), args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imgae-predict`` / ``python -m imgae_dx_jax.predict``."""
    return run_cli(run, predict_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
