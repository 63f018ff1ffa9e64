"""INT8 calibration sources: folders, rosbag2 topics, samples; preprocessing identical to inference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from refinenet_ros.backends.calibration import (
    BagSource,
    CalibrationError,
    FolderSource,
    SampleSource,
    calibration_batches,
    make_source,
)
from refinenet_ros.labels import get_label_set
from refinenet_ros.samples import sample_sequence
from refinenet_ros.segmenter import Segmenter

SIZE = (48, 80)


class RecordingBackend:
    """A real Backend implementation that records the batches the Segmenter hands it."""

    name = "recording"
    device = "cpu"
    num_classes = 21
    max_batch = 1

    def __init__(self, size: tuple[int, int]) -> None:
        self.input_size: tuple[int, int] | None = size
        self.seen: list[npt.NDArray[np.uint8]] = []

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        self.seen.append(images.copy())
        n, h, w = images.shape[:3]
        return np.zeros((n, h, w), np.int32), np.ones((n, h, w), np.float32)


def write_images(folder: Path, images: list[npt.NDArray[np.uint8]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rgb[..., ::-1])


def test_calibration_batches_equal_what_the_segmenter_feeds_the_backend(tmp_path: Path) -> None:
    frames = sample_sequence(3, (120, 160))
    write_images(tmp_path / "imgs", frames)
    backend = RecordingBackend(SIZE)
    segmenter = Segmenter(backend, get_label_set("voc"))
    for frame in frames:
        segmenter(frame)
    batches = list(calibration_batches(FolderSource(tmp_path / "imgs"), SIZE, batch=1))
    assert len(batches) == 3
    for seen, batch in zip(backend.seen, batches, strict=True):
        assert batch.dtype == np.uint8 and batch.shape == (1, *SIZE, 3)
        np.testing.assert_array_equal(seen, batch)


def test_folder_source_samples_evenly_and_fingerprints_content(tmp_path: Path) -> None:
    frames = sample_sequence(10, (40, 40))
    write_images(tmp_path, frames)
    source = FolderSource(tmp_path, count=4)
    assert [p.name for p in source.files()] == ["000.png", "003.png", "006.png", "009.png"]
    assert len(list(source.images())) == 4
    before = source.fingerprint()
    assert FolderSource(tmp_path, count=4).fingerprint() == before
    write_images(tmp_path / "x", frames[:1])
    (tmp_path / "009.png").write_bytes((tmp_path / "x" / "000.png").read_bytes())
    assert source.fingerprint() != before
    batches = list(calibration_batches(source, SIZE, batch=2))
    assert [b.shape for b in batches] == [(2, *SIZE, 3)] * 2


def test_a_folder_of_subfolders_is_sampled_across_them(tmp_path: Path) -> None:
    frames = sample_sequence(6, (40, 40))
    for room in ("bedroom", "kitchen", "office"):
        write_images(tmp_path / room, frames[:2])
    source = FolderSource(tmp_path, count=3)
    assert [p.parent.name for p in source.files()] == ["bedroom", "kitchen", "office"]
    assert len(list(source.images())) == 3


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        FolderSource(tmp_path / "missing").files()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CalibrationError, match="holds no images"):
        FolderSource(tmp_path).files()


@pytest.mark.parametrize(("encoding", "compressed"), [("bgr8", False), ("rgb8", True)])
def test_bag_source_decodes_image_topics(tmp_path: Path, encoding: str, compressed: bool) -> None:
    from refinenet_ros.bag import write_sample_bag

    bag = write_sample_bag(
        tmp_path / "bag", frames=6, size=(48, 64), encoding=encoding, compressed=compressed, camera_info=True
    )
    topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    source = BagSource(bag, topic, count=3)
    images = list(source.images())
    assert len(images) == 3
    expected = sample_sequence(6, (48, 64))
    for image, index in zip(images, (0, 2, 5), strict=True):  # evenly spaced over 6 frames
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        diff = np.abs(image.astype(int) - expected[index].astype(int)).mean()
        assert diff < (8 if compressed else 0.01), diff  # JPEG is lossy, raw is exact
    assert source.fingerprint() == BagSource(bag, topic, count=3).fingerprint()
    assert source.fingerprint() != BagSource(bag, topic, count=4).fingerprint()
    with pytest.raises(CalibrationError, match=r"not in .*image topics there: /camera/image_raw"):
        list(BagSource(bag, "/nope", 3).images())
    with pytest.raises(CalibrationError, match="carries sensor_msgs/msg/CameraInfo"):
        list(BagSource(bag, "/camera/camera_info", 3).images())


def test_a_folder_that_is_not_a_bag_is_a_calibration_error_naming_it(tmp_path: Path) -> None:
    """rosbags' own refusal reaches the user as this package's error, so the command line
    prints one line (not a traceback) naming the calibration bag."""
    not_a_bag = tmp_path / "notabag"
    not_a_bag.mkdir()
    (not_a_bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, record]\n")
    with pytest.raises(CalibrationError, match=rf"calibration bag {not_a_bag}: "):
        list(BagSource(not_a_bag, "/camera/image_raw", 3).images())


def test_make_source_validates_option_combinations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CalibrationError, match="needs --calib-topic"):
        make_source(bag=str(tmp_path))
    with pytest.raises(CalibrationError, match="needs --calib-bag"):
        make_source(topic="/camera")
    with pytest.raises(CalibrationError, match="either"):
        make_source(folder=str(tmp_path), bag=str(tmp_path), topic="/c")
    with caplog.at_level("WARNING", logger="refinenet_ros"):
        source = make_source(count=5)
    assert isinstance(source, SampleSource) and "no calibration data" in caplog.text
    images = list(source.images())
    assert len(images) == 5 and all(i.ndim == 3 for i in images)
    assert isinstance(make_source(folder=str(tmp_path), count=3), FolderSource)
