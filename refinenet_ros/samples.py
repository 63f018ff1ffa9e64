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


def street_scenes(count: int, size: tuple[int, int] = (480, 640)) -> list[npt.NDArray[np.uint8]]:
    """``count`` drawn street scenes (H, W = ``size``): sky, façades with windows, road with
    lane marks, cars, trees, sensor noise, each seeded by its index.

    The last resort where neither street photographs nor scikit-image are installed (a
    robot installed by colcon alone): unlike random noise they have the flat regions and
    edges that real frames have, so comparing two backends' labels on them means something.
    """
    import cv2

    h, w = size
    scenes = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        img = np.empty((h, w, 3), np.uint8)
        horizon = int(h * rng.uniform(0.35, 0.5))
        sky = np.linspace(rng.uniform(150, 200), rng.uniform(210, 250), horizon)
        img[:horizon] = np.stack([sky * 0.75, sky * 0.85, sky], axis=-1).astype(np.uint8)[:, None, :]
        img[horizon:] = rng.integers(80, 110)  # road
        x = 0
        while x < w:  # façades
            bw = int(rng.integers(w // 8, w // 3))
            top = int(rng.integers(h // 10, horizon))
            colour = tuple(int(c) for c in rng.integers(60, 200, 3))
            cv2.rectangle(img, (x, top), (x + bw, int(horizon + h * 0.08)), colour, -1)
            for wy in range(top + 8, horizon - 8, 22):
                for wx in range(x + 6, x + bw - 12, 18):
                    cv2.rectangle(img, (wx, wy), (wx + 9, wy + 12), (40, 50, 60), -1)
            x += bw
        for lx in range(int(rng.integers(0, 40)), w, 90):  # lane marks
            cv2.rectangle(img, (lx, int(h * 0.8)), (lx + 45, int(h * 0.8) + 6), (230, 230, 230), -1)
        for _ in range(int(rng.integers(1, 4))):  # cars
            cx, cw = int(rng.integers(0, w)), int(rng.integers(w // 10, w // 5))
            cy = int(rng.integers(horizon + h // 10, h - h // 8))
            colour = tuple(int(c) for c in rng.integers(20, 220, 3))
            cv2.rectangle(img, (cx, cy - cw // 2), (cx + cw, cy), colour, -1)
            for wheel in (cx + cw // 5, cx + 4 * cw // 5):
                cv2.circle(img, (wheel, cy), max(3, cw // 10), (20, 20, 20), -1)
        for _ in range(int(rng.integers(0, 3))):  # trees
            tx = int(rng.integers(0, w))
            cv2.rectangle(img, (tx - 4, horizon - 10), (tx + 4, horizon + h // 10), (60, 45, 30), -1)
            cv2.circle(img, (tx, horizon - 20), int(rng.integers(h // 20, h // 8)), (50, 110, 40), -1)
        noise = rng.normal(0, 4, img.shape)
        scenes.append(np.clip(cv2.GaussianBlur(img, (3, 3), 0) + noise, 0, 255).astype(np.uint8))
    return scenes
