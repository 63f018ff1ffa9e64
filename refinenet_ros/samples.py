"""Bundled sample images (scikit-image's own data files: never a download).

Used by ``make demo``, the node demo's player and tests that need natural images.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_NAMES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")


def sample_images() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """(name, HxWx3 uint8 RGB) for each bundled sample."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the bundled samples come from scikit-image: pip install 'refinenet_ros[samples]'"
        ) from exc
    return [(name, np.ascontiguousarray(getattr(data, name)()[..., :3])) for name in SAMPLE_NAMES]


def sample_sequence(count: int, size: tuple[int, int] = (480, 640)) -> list[npt.NDArray[np.uint8]]:
    """A camera-like sequence: a window panning across the samples, ``size`` = (H, W).

    Gives a player something that changes from frame to frame without shipping video.
    """
    import cv2

    h, w = size
    # Each sample scaled once so the window can pan 25 % beyond the frame size.
    panned = []
    for _, src in sample_images():
        scale = max(h / src.shape[0], w / src.shape[1]) * 1.25
        panned.append(cv2.resize(src, (int(src.shape[1] * scale) + 1, int(src.shape[0] * scale) + 1)))
    frames: list[npt.NDArray[np.uint8]] = []
    for i in range(count):
        big = panned[(i // 30) % len(panned)]
        t = (i % 30) / 29.0
        y = int(t * (big.shape[0] - h))
        x = int(t * (big.shape[1] - w))
        frames.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
    return frames
