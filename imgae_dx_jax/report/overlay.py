"""Anomaly maps blended over grayscale images: hot = high map value."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

OVERLAY_CMAP = "jet"


def overlay_rgb(image: np.ndarray, amap: np.ndarray, scale: float) -> np.ndarray:
    """Blend an anomaly map over a grayscale image: hot = high map value.

    Args:
        image: ``[H, W]`` uint8 grayscale image.
        amap: ``[H, W]`` anomaly map (same size), >= 0.
        scale: map value shown at full colour and opacity (higher values saturate).

    Returns:
        ``[H, W, 3]`` uint8 RGB; the colour's opacity grows with the map value (up to 0.7),
        so normal-looking regions keep the X-ray visible.
    """
    level = np.clip(np.asarray(amap, dtype=np.float64) / max(scale, 1e-12), 0.0, 1.0)
    colour = colormaps[OVERLAY_CMAP](level)[..., :3]
    gray = np.repeat((np.asarray(image, dtype=np.float64) / 255.0)[..., None], 3, axis=-1)
    alpha = 0.7 * level[..., None]
    return np.round((1.0 - alpha) * gray * 255.0 + alpha * colour * 255.0).astype(np.uint8)
