"""The candidate image scores of imgae_dx_jax.inference and the median filter behind them."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.ndimage import median_filter as scipy_median

from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.nih import build_catalog
from imgae_dx_jax.data.stores import sample_archive_path
from imgae_dx_jax.families import create_model
from imgae_dx_jax.inference import (
    Scorer,
    candidate_scores,
    median_filter,
    median_network,
    score_region,
    score_split,
    top_mean,
    uses_median,
)
from imgae_dx_jax.schema import SCORES


@pytest.mark.parametrize(
    ("shape", "size"),
    [((3, 16, 16), 5), ((2, 7, 9), 5), ((1, 5, 5), 5), ((2, 9, 8), 3), ((1, 12, 12), 7)],
)
def test_median_filter_equals_scipy(shape: tuple[int, int, int], size: int) -> None:
    maps = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    maps[0, :3, :3] = 0.5  # ties
    expected = scipy_median(maps, size=(1, size, size), mode="reflect")
    np.testing.assert_array_equal(np.asarray(median_filter(jnp.asarray(maps), size)), expected)


def test_median_network_sorts_every_zero_one_input() -> None:
    """The 0-1 principle: a comparator network that sorts every 0/1 input sorts every input."""
    width = 16
    pairs = median_network(width)
    for code in range(2**width):
        lanes = [(code >> i) & 1 for i in range(width)]
        for low, high in pairs:
            if lanes[low] > lanes[high]:
                lanes[low], lanes[high] = lanes[high], lanes[low]
        assert lanes == sorted(lanes), code


def test_median_filter_removes_an_isolated_spike_but_keeps_a_blob() -> None:
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, 3, 3] = 10.0  # one hot pixel: noise
    maps[0, 8:14, 8:14] = 1.0  # a 6x6 lesion
    filtered = np.asarray(median_filter(jnp.asarray(maps)))
    assert filtered[0, 3, 3] == 0.0
    assert filtered[0, 10, 10] == 1.0


def test_top_mean_and_the_candidates() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 20, 20)).astype(np.float32)  # 400 pixels
    flat = np.sort(maps.reshape(2, -1), axis=1)
    np.testing.assert_allclose(top_mean(jnp.asarray(maps), 10), flat[:, -40:].mean(1), rtol=1e-6)
    np.testing.assert_allclose(top_mean(jnp.asarray(maps), 0.01), flat[:, -1], rtol=1e-6)
    filtered = scipy_median(maps, size=(1, 5, 5), mode="reflect")
    scores = np.asarray(candidate_scores(jnp.asarray(maps), jnp.asarray(filtered)))
    assert scores.shape == (2, len(SCORES))
    sorted_filtered = np.sort(filtered.reshape(2, -1), axis=1)
    for i, name in enumerate(SCORES):
        if name == "mean":
            expected = maps.mean(axis=(1, 2))
        else:
            k = round(400 * int(name[3:]) / 100)
            expected = sorted_filtered[:, -k:].mean(1)
        np.testing.assert_allclose(scores[:, i], expected, rtol=1e-5, err_msg=name)
    assert [uses_median(n) for n in SCORES] == [False] + [True] * (len(SCORES) - 1)


def test_scorer_reports_the_selected_candidate_and_its_maps() -> None:
    config = load_config(
        overrides=[
            "model.name=ae",
            "model.ae.widths=[4,8]",
            "data.image_size=16",
            "eval.batch_size=2",
        ]
    )
    model = create_model(config.model, 16, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 1), dtype=np.uint8)
    plain = Scorer(model, config)(images, keep_maps=True)
    top = Scorer(model, config).select("top5")(images, keep_maps=True)
    assert plain.maps is not None and top.maps is not None
    edge = round(config.eval.border * 16)
    assert edge == 2  # the default border leaves out 2 of 16 pixels at each edge
    core = (slice(None), slice(edge, 16 - edge), slice(edge, 16 - edge))
    np.testing.assert_allclose(plain.scores, plain.maps[core].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(plain.candidates, top.candidates)
    np.testing.assert_array_equal(top.scores, top.candidates[:, SCORES.index("top5")])
    expected_maps = scipy_median(plain.maps, size=(1, 5, 5), mode="reflect")
    np.testing.assert_allclose(top.maps, expected_maps, rtol=1e-6)
    np.testing.assert_allclose(top.peaks, expected_maps[core].max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(plain.peaks, plain.maps[core].max(axis=(1, 2)), rtol=1e-6)


def test_scores_ignore_the_border_and_only_the_border() -> None:
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, 0, :] = 9.0  # a hot edge row: outside the scored region
    maps[1, 8, 8] = 9.0  # a hot centre pixel: inside it
    core = np.asarray(score_region(jnp.asarray(maps), 0.125))
    assert core.shape == (2, 12, 12)
    assert core[0].max() == 0.0 and core[1].max() == 9.0
    np.testing.assert_array_equal(np.asarray(score_region(jnp.asarray(maps), 0.0)), maps)


def test_scoring_a_split_shows_every_image_readable_or_not(bars) -> None:
    settings = ["model.name=ae", "model.ae.widths=[4,8]", "data.image_size=16", "eval.batch_size=3"]
    config = load_config(overrides=settings)
    store = ZipStore(sample_archive_path())
    records = list(build_catalog(store, ("images_001",)).records[:10])
    records[-1] = dataclasses.replace(records[-1], key="gone.png", member="images_001/gone.png")
    scorer = Scorer(create_model(config.model, 16, rngs=nnx.Rngs(0)), config)
    split = score_split(scorer, config, records, store, desc="scoring test")
    assert len(split.records) == 9 and split.skipped == {"unreadable (KeyError)": 1}
    (bar,) = bars
    assert (bar.desc, bar.total, bar.n, bar.unit) == ("scoring test", 10, 10, "img")
