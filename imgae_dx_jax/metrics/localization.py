"""Localization of anomaly maps against bounding boxes: pixel AUROC and pointing game."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from imgae_dx_jax.data.nih import Catalog
from imgae_dx_jax.metrics.image import roc_auc
from imgae_dx_jax.results import SplitScores

BOX_SCALE = 1024
"""NIH boxes are in the pixel coordinates of the original 1024x1024 images."""


def _box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray | None:
    """Pixels of a map that overlap an ``(x, y, w, h)`` box, or None if the clipped box is empty.

    ``x`` runs along columns and ``y`` along rows; a pixel ``(r, c)`` covers ``[c, c + 1) x
    [r, r + 1)``, and every pixel overlapping the clipped box with positive area is inside.
    """
    height, width = shape
    x, y, w, h = (float(v) for v in box)
    x0, x1 = max(x, 0.0), min(x + w, float(width))
    y0, y1 = max(y, 0.0), min(y + h, float(height))
    if not (x1 > x0 and y1 > y0):
        return None
    mask = np.zeros(shape, dtype=bool)
    mask[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
    return mask


def localization_metrics(
    maps: Sequence[ArrayLike] | np.ndarray, boxes: Sequence[Sequence[Sequence[float]]]
) -> dict[str, Any]:
    """Localisation quality of anomaly maps against ground-truth bounding boxes.

    Boxes partly outside a map are clipped to it; a box with no area left after clipping is
    not usable and is only counted. Images with no usable box are left out of both metrics.

    Args:
        maps: one 2-D ``[H, W]`` anomaly map per image (sizes may differ), higher = more
            abnormal.
        boxes: per image, a sequence of ``(x, y, w, h)`` boxes in that map's pixel coordinates
            (``x`` along columns, ``y`` along rows).

    Returns:
        ``pixel_auroc``: AUROC of the map values pooled over the images, pixels inside any box
        being positive and all other pixels negative; ``pointing_game``: the fraction of images
        whose map maximum (first in row-major order on ties) lies inside one of its boxes;
        ``n_images`` (images used), ``n_boxes`` (usable boxes) and ``n_boxes_unusable``.

    Raises:
        ValueError: if ``maps`` and ``boxes`` differ in length, a map is not 2-D or not finite,
            no image has a usable box, or the boxes cover every pixel.

    """
    if len(maps) != len(boxes):
        raise ValueError(f"got {len(maps)} maps but {len(boxes)} box lists")
    values: list[np.ndarray] = []
    inside: list[np.ndarray] = []
    hits = n_images = n_boxes = n_unusable = 0
    for index, (raw, image_boxes) in enumerate(zip(maps, boxes, strict=True)):
        amap = np.asarray(raw, dtype=np.float64)
        if amap.ndim != 2:
            raise ValueError(f"map {index} must be 2-D [H, W], got shape {amap.shape}")
        if not np.all(np.isfinite(amap)):
            raise ValueError(f"map {index} has non-finite values")
        masks = [_box_mask(amap.shape, box) for box in image_boxes]
        usable = [mask for mask in masks if mask is not None]
        n_unusable += len(masks) - len(usable)
        if not usable:
            continue
        union = np.logical_or.reduce(usable)
        n_images += 1
        n_boxes += len(usable)
        hits += bool(union.flat[int(np.argmax(amap))])
        values.append(amap.ravel())
        inside.append(union.ravel())
    if not n_images:
        raise ValueError("no image has a usable box (all boxes empty after clipping)")
    pixels_inside = np.concatenate(inside)
    if pixels_inside.all():
        raise ValueError("pixel AUROC undefined: the boxes cover every pixel of every map")
    return {
        "pixel_auroc": roc_auc(pixels_inside.astype(np.int64), np.concatenate(values)),
        "pointing_game": hits / n_images,
        "n_images": n_images,
        "n_boxes": n_boxes,
        "n_boxes_unusable": n_unusable,
    }


def scaled_boxes(
    catalog: Catalog, key: str, image_size: int
) -> list[tuple[str, float, float, float, float]]:
    """NIH boxes of an image as ``(finding, x, y, w, h)`` in ``image_size`` pixels."""
    scale = image_size / BOX_SCALE
    return [
        (f, x * scale, y * scale, w * scale, h * scale)
        for f, x, y, w, h in catalog.boxes.get(key, ())
    ]


def localization(split: SplitScores, catalog: Catalog, image_size: int) -> dict[str, Any]:
    """Pixel AUROC inside vs. outside the NIH boxes and pointing game, on the boxed images.

    Args:
        split: scores of the test images that have boxes, with their maps kept.
        catalog: where the boxes are.
        image_size: side of the maps.

    Returns:
        :func:`localization_metrics` plus ``n_images_with_boxes``; when
        no box is usable the metrics are None and ``note`` says why.
    """
    boxes = [[b[1:] for b in scaled_boxes(catalog, r.key, image_size)] for r in split.records]
    out: dict[str, Any] = {"n_images_with_boxes": len(split.records)}
    if not split.records:
        return out | {
            "pixel_auroc": None,
            "pointing_game": None,
            "n_images": 0,
            "n_boxes": 0,
            "n_boxes_unusable": 0,
            "note": "no readable test image has an NIH box",
        }
    assert split.maps is not None
    try:
        return out | localization_metrics(list(split.maps), boxes)
    except ValueError as err:
        return out | {
            "pixel_auroc": None,
            "pointing_game": None,
            "n_images": 0,
            "n_boxes": 0,
            "n_boxes_unusable": sum(len(b) for b in boxes),
            "note": str(err),
        }
