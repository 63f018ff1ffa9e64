"""Sample images for the demo, benchmarks and tests: real pictures, never committed, never
downloaded at run time.

* :func:`street_images`: real street photographs for ``make demo`` (the bundled model is
  a street model). ``make`` takes them from a package registry at set-up: the
  ``assets/bus.jpg`` street photo inside the ultralytics wheel (``pip download --no-deps``,
  extracted by :func:`extract_street_images` into ``.venv/share/refinenet_ros/street``).
* :func:`sample_images`: scikit-image's own data files, the fallback (said in one line).
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger("refinenet_ros")

SAMPLE_NAMES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")
STREET_ENV = "REFINENET_ROS_STREET_IMAGES"
#: (wheel member, file name) of the street photographs taken from a registry wheel
STREET_MEMBERS: tuple[tuple[str, str], ...] = (("ultralytics/assets/bus.jpg", "bus.jpg"),)


def street_dir() -> Path:
    """``$REFINENET_ROS_STREET_IMAGES``, else ``<venv>/share/refinenet_ros/street``."""
    return Path(os.environ.get(STREET_ENV) or Path(sys.prefix) / "share" / "refinenet_ros" / "street")


def extract_street_images(wheel: str | Path, dest: str | Path | None = None) -> list[Path]:
    """Copy the street photographs out of a downloaded wheel (set-up time, by ``make``)."""
    out = Path(dest) if dest is not None else street_dir()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as z:
        for member, name in STREET_MEMBERS:
            (out / name).write_bytes(z.read(member))
            written.append(out / name)
    return written


def street_images() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """The street photographs found in :func:`street_dir` (empty when set-up could not get them)."""
    from refinenet_ros.io import read_rgb

    folder = street_dir()
    if not folder.is_dir():
        return []
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [(p.stem, read_rgb(p)) for p in paths]


def demo_images() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """Street photographs when set-up fetched them, else the scikit-image samples (said once)."""
    street = street_images()
    if street:
        return street
    log.warning(
        "no street photographs in %s (set-up takes them from the ultralytics wheel with "
        "`pip download`; it failed or was skipped): the demo uses scikit-image's samples instead",
        street_dir(),
    )
    return sample_images()


def sample_images() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """(name, HxWx3 uint8 RGB) for each bundled sample."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the bundled samples come from scikit-image: pip install 'refinenet_ros[samples]'"
        ) from exc
    return [(name, np.ascontiguousarray(getattr(data, name)()[..., :3])) for name in SAMPLE_NAMES]


def sample_sequence(
    count: int,
    size: tuple[int, int] = (480, 640),
    images: list[tuple[str, npt.NDArray[np.uint8]]] | None = None,
) -> list[npt.NDArray[np.uint8]]:
    """A camera-like sequence: a window panning across ``images`` (default: the scikit-image
    samples), ``size`` = (H, W).

    Gives a player something that changes from frame to frame without shipping video.
    """
    import cv2

    h, w = size
    # Each sample scaled once so the window can pan 25 % beyond the frame size.
    panned = []
    for _, src in images if images is not None else sample_images():
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
