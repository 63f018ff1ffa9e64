"""Small synthetic rosbag2 bags for tests and benchmarks (Image or CompressedImage + camera_info)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from refinenet_ros.bag.options import BagError
from refinenet_ros.bag.topics import CAMERA_INFO_TYPE, COMPRESSED_TYPE, IMAGE_TYPE, camera_info_topic
from refinenet_ros.io import bag_errors


def write_sample_bag(
    path: str | os.PathLike[str],
    *,
    frames: int = 10,
    size: tuple[int, int] = (240, 320),
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    compressed: bool = False,
    camera_info: bool = True,
    storage: str = "mcap",
    rate_hz: float = 10.0,
    frame_id: str = "camera",
) -> Path:
    """Write a small camera bag from the bundled samples (demos, tests, benchmarks).

    Images go to ``topic`` (or ``topic + '/compressed'`` as JPEG) at ``rate_hz`` with
    stamps equal to log times; ``camera_info`` adds ``<parent>/camera_info``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros.images.encodings import encode_compressed, encode_image
    from refinenet_ros.samples import sample_sequence

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    h, w = size
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    path = Path(path)
    with (
        bag_errors(BagError, f"cannot write the sample bag {path}"),
        Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer,
    ):
        img_topic = f"{topic}/compressed" if compressed else topic
        img_conn = writer.add_connection(
            img_topic, COMPRESSED_TYPE if compressed else IMAGE_TYPE, typestore=ts
        )
        info_conn = (
            writer.add_connection(camera_info_topic(topic), CAMERA_INFO_TYPE, typestore=ts)
            if camera_info
            else None
        )
        fx = 0.8 * w
        for i, rgb in enumerate(sample_sequence(frames, size)):
            stamp = int(1_700_000_000 * 1e9 + i * 1e9 / rate_hz)
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](
                    sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000
                ),
                frame_id=frame_id,
            )
            if compressed:
                msg: Any = t[COMPRESSED_TYPE](
                    header=header,
                    format="rgb8; jpeg compressed bgr8",
                    data=np.frombuffer(encode_compressed(rgb), np.uint8),
                )
                writer.write(img_conn, stamp, ts.serialize_cdr(msg, COMPRESSED_TYPE))
            else:
                data, step = encode_image(rgb, encoding)
                msg = t[IMAGE_TYPE](
                    header=header,
                    height=h,
                    width=w,
                    encoding=encoding,
                    is_bigendian=0,
                    step=step,
                    data=np.frombuffer(data, np.uint8),
                )
                writer.write(img_conn, stamp, ts.serialize_cdr(msg, IMAGE_TYPE))
            if info_conn is not None:
                info = t[CAMERA_INFO_TYPE](
                    header=header,
                    height=h,
                    width=w,
                    distortion_model="plumb_bob",
                    d=np.zeros(5),
                    k=np.array([fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1], dtype=np.float64),
                    r=np.eye(3).reshape(-1),
                    p=np.array([fx, 0, w / 2, 0, 0, fx, h / 2, 0, 0, 0, 1, 0], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=t["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                    ),
                )
                writer.write(info_conn, stamp + 1000, ts.serialize_cdr(info, CAMERA_INFO_TYPE))
    return path
