"""Batched scoring of images with a trained model, shared by evaluation and prediction.

:class:`Scorer` compiles a model's anomaly maps and image scores once and runs them in
fixed-size batches; :func:`score_split` scores every readable image of a split. The image
score is the aggregation :func:`image_scores` of the anomaly map. Images are normalised as in
training (:func:`~imgae_dx_jax.data.intensity.model_input`, ``data.intensity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgae_dx_jax.data import Store
from imgae_dx_jax.data.intensity import model_input
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset
from imgae_dx_jax.families import anomaly_maps
from imgae_dx_jax.results import SplitScores
from imgae_dx_jax.schema import Config


def image_scores(maps: jax.Array) -> jax.Array:
    """Per-image anomaly score: the mean of each map, [B, H, W] -> [B]."""
    return jnp.mean(maps, axis=(1, 2))


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a short last batch to ``batch_size`` by repeating its first image (fixed shapes)."""
    if len(images) == batch_size:
        return images
    return np.concatenate([images, np.repeat(images[:1], batch_size - len(images), axis=0)])


@dataclass(frozen=True)
class Inference:
    """Model outputs for a batch of images; the arrays are None unless kept."""

    scores: np.ndarray
    peaks: np.ndarray
    reconstructions: np.ndarray | None
    maps: np.ndarray | None


class Scorer:
    """A model's anomaly maps and scores, compiled once, run in fixed-size batches."""

    def __init__(self, model: nnx.Module, config: Config) -> None:
        """Split the model and compile its scoring function for ``config.eval.batch_size``."""
        graphdef, self._state = nnx.split(model)
        self.batch_size = config.eval.batch_size

        @jax.jit
        def run(state: Any, images: jax.Array) -> tuple[jax.Array, ...]:
            model = nnx.merge(graphdef, state)
            inputs = model_input(images, config.data.intensity)
            x_hat, maps = anomaly_maps(model, inputs, config.model)
            return image_scores(maps), jnp.max(maps, axis=(1, 2)), x_hat[..., 0], maps

        self._run = run

    def __call__(self, images: np.ndarray, *, keep_maps: bool = False) -> Inference:
        """Score uint8 images ``[N, size, size, 1]`` (N >= 1).

        Args:
            images: the images, already decoded and resized to the model's size.
            keep_maps: also return the reconstructions and anomaly maps ([N, H, W]).

        Returns:
            Per-image scores and map maxima, and the maps if asked for.
        """
        parts: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            outputs = self._run(self._state, pad_batch(chunk, self.batch_size))
            wanted = outputs if keep_maps else outputs[:2]
            parts.append(tuple(np.asarray(x)[: len(chunk)] for x in wanted))
        joined = [np.concatenate(column) for column in zip(*parts, strict=True)]
        return Inference(
            joined[0].astype(np.float64),
            joined[1].astype(np.float64),
            joined[2] if keep_maps else None,
            joined[3] if keep_maps else None,
        )


def score_split(
    scorer: Scorer,
    config: Config,
    records: Sequence[Record],
    store: Store,
    *,
    keep_maps: bool = False,
) -> SplitScores:
    """Score every readable image of ``records`` (unreadable ones are skipped and counted).

    Args:
        scorer: the model's :class:`Scorer`.
        config: the run's config (image size, batch size, decoding threads).
        records: the images to score.
        store: where their bytes are.
        keep_maps: also keep the images, reconstructions and anomaly maps.

    Returns:
        The scores of the readable images, in the order of ``records``.
    """
    skips = SkipLog()
    source = ImageSource(records, store, config.data.image_size, skips)
    indices: list[np.ndarray] = []
    results: list[Inference] = []
    images: list[np.ndarray] = []
    for batch in eval_dataset(source, scorer.batch_size, config.data.num_threads):
        results.append(scorer(batch["image"], keep_maps=keep_maps))
        indices.append(batch["index"])
        if keep_maps:
            images.append(batch["image"][..., 0])
    order = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
    kept = tuple(source.records[i] for i in order)

    def join(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results]) if results else np.zeros(0)

    return SplitScores(
        kept,
        join("scores"),
        join("peaks"),
        skips.by_reason(),
        np.concatenate(images) if keep_maps and images else None,
        join("reconstructions") if keep_maps else None,
        join("maps") if keep_maps else None,
    )
