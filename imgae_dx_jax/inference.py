"""Batched scoring of images with a trained model, shared by evaluation and prediction.

:class:`Scorer` compiles a model's anomaly maps and image scores once and runs them in
fixed-size batches; :func:`score_split` scores every readable image of a split. Images are
normalised as in training (:func:`~imgae_dx_jax.data.intensity.model_input`,
``data.intensity``).

Every image gets each candidate score of :data:`~imgae_dx_jax.schema.SCORES` in the same
compiled call (:func:`candidate_scores`): ``mean``, the mean of the raw anomaly map, and
``top<k>``, the mean of the top k% pixels of the map after a 5x5 median filter (the residual
post-processing of Kascenas et al., MIDL 2022). Every score is taken over the central part of
the map only: ``eval.border`` of the side is left out at each edge, where chest radiographs
carry burned-in markers, collimation edges and devices (the counterpart of the authors'
foreground mask; :func:`score_region`). Evaluation picks one on the validation split
(:func:`imgae_dx_jax.metrics.threshold.choose_score`); a :class:`Scorer` reports that one as
the score, and its maps are the post-processed maps that candidate is computed from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgae_dx_jax.data import Store
from imgae_dx_jax.data.intensity import model_input
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset
from imgae_dx_jax.families import anomaly_maps, compiler_options
from imgae_dx_jax.memory import release_memory
from imgae_dx_jax.progress import progress_bar
from imgae_dx_jax.results import SplitScores
from imgae_dx_jax.schema import SCORES, Config

T = TypeVar("T")

MEDIAN_SIZE = 5
"""Side of the median filter applied to the maps of the ``top<k>`` scores."""


def median_filter(maps: jax.Array, size: int = MEDIAN_SIZE) -> jax.Array:
    """Median of each ``size x size`` neighbourhood of [B, H, W] maps (odd ``size``).

    Borders are extended by reflection (SciPy's ``reflect`` mode, so the result equals
    ``scipy.ndimage.median_filter(maps, size=(1, size, size))``). The median is the middle
    output of a sorting network (:func:`median_network`) of elementwise minima and maxima
    over the ``size * size`` shifted maps, which XLA fuses into one pass; a sort along a
    stacked axis took ~40 times as long on the CPU.
    """
    radius = size // 2
    height, width = maps.shape[1:]
    padded = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    lanes: list[jax.Array | None] = [
        padded[:, i : i + height, j : j + width] for i in range(size) for j in range(size)
    ]
    lanes += [None] * (median_network_width(size * size) - len(lanes))  # None: +infinity
    for low, high in median_network(len(lanes)):
        a, b = lanes[low], lanes[high]
        if a is None:  # +inf against anything: the other value moves down
            lanes[low], lanes[high] = b, a
        elif b is not None:
            lanes[low], lanes[high] = jnp.minimum(a, b), jnp.maximum(a, b)
    middle = lanes[size * size // 2]
    assert middle is not None  # the padding lanes sort above every real value
    return middle


def median_network_width(n: int) -> int:
    """The smallest power of two >= ``n``: the width of the network that sorts ``n`` lanes."""
    return 1 << (n - 1).bit_length()


def median_network(width: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of ``width`` lanes (a power of two) as comparators.

    Each ``(low, high)`` pair puts the smaller value in lane ``low``; applied in order they
    sort any input. XLA drops the comparisons the middle lane does not depend on.
    """
    pairs = []
    p = 1
    while p < width:
        k = p
        while k >= 1:
            for j in range(k % p, width - k, 2 * k):
                for i in range(min(k, width - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def uses_median(score: str) -> bool:
    """Whether the candidate ``score`` is computed from the median-filtered map."""
    return score != "mean"


def top_mean(maps: jax.Array, percent: float) -> jax.Array:
    """Mean of the highest ``percent``% pixels of each map (at least one), [B, H, W] -> [B]."""
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, round(flat.shape[1] * percent / 100.0))
    return jnp.mean(jnp.sort(flat, axis=1)[:, -k:], axis=1)


def candidate_scores(maps: jax.Array, filtered: jax.Array) -> jax.Array:
    """Every candidate score of :data:`~imgae_dx_jax.schema.SCORES`, [B, len(SCORES)].

    Args:
        maps: the raw anomaly maps [B, H, W] (for ``mean``).
        filtered: the same maps after :func:`median_filter` (for ``top<k>``).
    """
    columns = [
        jnp.mean(maps, axis=(1, 2)) if name == "mean" else top_mean(filtered, float(name[3:]))
        for name in SCORES
    ]
    return jnp.stack(columns, axis=1)


def score_region(maps: jax.Array, border: float) -> jax.Array:
    """The central part of [B, H, W] maps that image scores are taken over.

    ``border`` is the fraction of each side left out at each edge (rounded to whole pixels);
    0 keeps the whole map.
    """
    height, width = maps.shape[1:]
    top, left = round(border * height), round(border * width)
    return maps[:, top : height - top, left : width - left]


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a short last batch to ``batch_size`` by repeating its first image (fixed shapes)."""
    if len(images) == batch_size:
        return images
    return np.concatenate([images, np.repeat(images[:1], batch_size - len(images), axis=0)])


@dataclass(frozen=True)
class Inference:
    """Model outputs for a batch of images; the arrays are None unless kept.

    ``scores``, ``peaks`` (map maxima) and ``maps`` are those of the scorer's chosen score;
    ``candidates`` [N, len(SCORES)] holds every candidate score and ``candidate_peaks``
    [N, 2] the maxima of the raw and of the median-filtered maps.
    """

    scores: np.ndarray
    peaks: np.ndarray
    candidates: np.ndarray
    candidate_peaks: np.ndarray
    reconstructions: np.ndarray | None
    maps: np.ndarray | None


class Scorer:
    """A model's anomaly maps and scores, compiled once, run in fixed-size batches."""

    def __init__(self, model: nnx.Module, config: Config, score: str = "mean") -> None:
        """Split the model and compile its scoring function for ``config.eval.batch_size``.

        Args:
            model: the trained model.
            config: its config.
            score: the candidate of :data:`~imgae_dx_jax.schema.SCORES` reported as the score.
        """
        graphdef, self._state = nnx.split(model)
        self.batch_size = config.eval.batch_size
        self.score = score
        self._column = SCORES.index(score)

        options = compiler_options(config.model, jax.default_backend())

        @partial(jax.jit, static_argnames="median", compiler_options=options)
        def run(state: Any, images: jax.Array, median: bool) -> tuple[jax.Array, ...]:
            model = nnx.merge(graphdef, state)
            inputs = model_input(images, config.data.intensity)
            x_hat, maps = anomaly_maps(model, inputs, config.model)
            filtered = median_filter(maps)
            core = [score_region(m, config.eval.border) for m in (maps, filtered)]
            peaks = jnp.stack([jnp.max(m, axis=(1, 2)) for m in core], axis=1)
            kept = filtered if median else maps
            return candidate_scores(*core), peaks, x_hat[..., 0], kept

        self._run = run

    def select(self, score: str) -> Scorer:
        """The same compiled model reporting the candidate ``score`` instead."""
        chosen = copy.copy(self)
        chosen.score, chosen._column = score, SCORES.index(score)
        return chosen

    def with_state(self, state: Any) -> Scorer:
        """The same compiled scoring with other weights: ``state`` of a same-shaped model."""
        other = copy.copy(self)
        other._state = state
        return other

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
            outputs = self._run(
                self._state, pad_batch(chunk, self.batch_size), uses_median(self.score)
            )
            wanted = outputs if keep_maps else outputs[:2]
            parts.append(tuple(np.asarray(x)[: len(chunk)] for x in wanted))
        joined = [np.concatenate(column) for column in zip(*parts, strict=True)]
        candidates = joined[0].astype(np.float64)
        candidate_peaks = joined[1].astype(np.float64)
        return Inference(
            candidates[:, self._column],
            candidate_peaks[:, int(uses_median(self.score))],
            candidates,
            candidate_peaks,
            joined[2] if keep_maps else None,
            joined[3] if keep_maps else None,
        )


def scan_split(
    records: Sequence[Record],
    store: Store,
    config: Config,
    batch_size: int,
    each: Callable[[np.ndarray], T],
    *,
    desc: str,
) -> tuple[tuple[Record, ...], list[T], dict[str, int]]:
    """Apply ``each`` to every batch of the readable images of ``records``, with a progress bar.

    Images are read at ``data.image_size`` (:class:`~imgae_dx_jax.data.pipeline.ImageSource`:
    the stage cache, else the store); unreadable ones are skipped and counted.

    Args:
        records: the images.
        store: where their bytes are.
        config: the image size and decoding threads.
        batch_size: images per batch (the last may be smaller).
        each: uint8 images ``[B, H, W, 1]`` -> the batch's result.
        desc: what the progress bar says is being done.

    Returns:
        ``(kept, results, skipped)``: the readable records in the order of ``records``, the
        batches' results in that order, and the number of skipped images per reason.
    """
    skips = SkipLog()
    source = ImageSource(records, store, config.data.image_size, skips)
    indices: list[np.ndarray] = []
    results: list[T] = []
    with progress_bar(desc, len(records), "img") as bar:
        for batch in eval_dataset(source, batch_size, config.data.num_threads):
            results.append(each(batch["image"]))
            indices.append(batch["index"])
            bar.update(len(batch["index"]))
        bar.update(len(skips))  # the unreadable images are done with too
    order = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
    return tuple(source.records[i] for i in order), results, skips.by_reason()


def score_split(
    scorer: Scorer,
    config: Config,
    records: Sequence[Record],
    store: Store,
    *,
    desc: str,
    keep_maps: bool = False,
) -> SplitScores:
    """Score every readable image of ``records`` (unreadable ones are skipped and counted).

    Args:
        scorer: the model's :class:`Scorer`.
        config: the run's config (image size, batch size, decoding threads).
        records: the images to score.
        store: where their bytes are.
        desc: what the progress bar says is being scored (``"scoring test"``).
        keep_maps: also keep the images, reconstructions and anomaly maps.

    Returns:
        The scores of the readable images, in the order of ``records``.
    """
    images: list[np.ndarray] = []

    def each(batch: np.ndarray) -> Inference:
        if keep_maps:
            images.append(batch[..., 0])
        return scorer(batch, keep_maps=keep_maps)

    kept, results, skipped = scan_split(records, store, config, scorer.batch_size, each, desc=desc)
    release_memory()  # the batches' buffers (and the first call's compilation)

    def join(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results]) if results else np.zeros(0)

    candidates = join("candidates").reshape(len(kept), len(SCORES))
    peaks = join("candidate_peaks").reshape(len(kept), 2)
    return SplitScores(
        kept,
        join("scores"),
        join("peaks"),
        skipped,
        np.concatenate(images) if keep_maps and images else None,
        join("reconstructions") if keep_maps else None,
        join("maps") if keep_maps else None,
        {
            name: (candidates[:, i], peaks[:, int(uses_median(name))])
            for i, name in enumerate(SCORES)
        },
    )
