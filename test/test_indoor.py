"""The bundled indoor model: its registry entry and teacher, the preset that runs it, and
labels on real indoor photographs.

The photographs test reads the held-out Places365 photographs in ../shared/data (never
committed, never trained on) and skips with the reason where they are absent, as in a
user's fresh clone; the rest needs only what the package ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLACES_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "indoor" / "places" / "eval"
ROOMS = ("bathroom", "bedroom", "dining_room", "entrance_hall", "kitchen", "living_room")
needs_places = pytest.mark.skipif(
    not PLACES_EVAL.is_dir(), reason=f"the held-out indoor photographs are not here ({PLACES_EVAL})"
)


def test_registry_lists_the_indoor_model_with_its_teacher() -> None:
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.weights import get_weights, weights_for

    w = get_weights("indoor")
    assert (w.model, w.labels, w.network_size) == ("lw_refinenet_mobilenetv2", "indoor", (288, 384))
    assert w.path.is_file() and w.path.stat().st_size < 10 * 2**20  # sha256 checked on access
    assert weights_for(None, "indoor") is w
    resolved = ModelConfig(labels="indoor").resolved()  # the label set alone finds the weights
    assert (resolved.weights_name, resolved.network_size) == ("indoor", (288, 384))
    proc = subprocess.run([sys.executable, "-m", "refinenet_ros", "weights", "--json"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["indoor"]
    assert "DeepLabV3" in listed["teacher"] and "Places365" in listed["dataset"]
    assert listed["metrics"]["teacher_agreement_miou"] > 0.3
    assert "val_miou" not in listed["metrics"]  # no human labels: agreement is not accuracy


def test_load_indoor_segments_any_image_into_its_classes(tmp_path: Path) -> None:
    from skimage import data

    import refinenet_ros

    seg = refinenet_ros.load("indoor", backend="torch", cache_dir=str(tmp_path))
    assert seg.label_set.name == "indoor" and seg.network_size == (288, 384)
    image = data.coffee()
    result = seg(image)
    assert result.labels.shape == image.shape[:2] and int(result.labels.max()) < 14


@needs_places
def test_bundled_indoor_model_labels_real_rooms() -> None:
    """Two held-out photographs of each room type: the room's big surfaces and its furniture
    must come out, not one class everywhere."""
    import refinenet_ros
    from refinenet_ros.io import read_rgb

    seg = refinenet_ros.load("indoor", backend="torch")
    classes = seg.label_set.classes
    share: dict[str, list[np.ndarray]] = {}
    for room in ROOMS:
        for path in sorted((PLACES_EVAL / room).glob("*.jpg"))[:2]:
            labels = seg(read_rgb(path)).labels.ravel()
            share.setdefault(room, []).append(np.bincount(labels, minlength=len(classes)) / labels.size)
    everything = np.mean([s for shares in share.values() for s in shares], axis=0)
    seen = {classes[i] for i in np.flatnonzero(everything > 0.005)}
    assert {"wall", "floor", "ceiling", "window", "bed", "chair", "table", "cabinet"} <= seen, seen
    assert everything.max() < 0.5, dict(zip(classes, everything.round(3), strict=True))
    bed = classes.index("bed")
    assert min(s[bed] for s in share["bedroom"]) > 0.05, "a bedroom photograph shows a bed"
    assert np.mean([s[bed] for r in ("bathroom", "kitchen") for s in share[r]]) < 0.05, "nor in bathrooms"
