from __future__ import annotations

import numpy as np
import pytest

from refinenet_ros.io import atomic_write, read_label_png, write_label_png
from refinenet_ros.labels import get_label_set


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_label_png_round_trips_class_ids_with_the_palette(tmp_path):
    from PIL import Image

    ls = get_label_set("cityscapes")
    labels = (np.arange(30 * 40) % 19).astype(np.uint8).reshape(30, 40)
    path = tmp_path / "labels.png"
    write_label_png(path, labels, ls)
    with Image.open(path) as img:
        assert img.mode == "P"
        palette = img.getpalette()
        assert palette is not None and palette[:3] == [128, 64, 128]
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_label_png_uses_16_bit_above_255_classes(tmp_path):
    labels = np.array([[0, 300], [1000, 7]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    write_label_png(path, labels, get_label_set("voc"))
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_atomic_write_gives_normal_permissions_and_keeps_existing_ones(tmp_path):
    import os

    from refinenet_ros.io import atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)
    fresh = tmp_path / "report.json"
    atomic_write_text(fresh, "{}")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    kept = tmp_path / "shared.json"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o640
