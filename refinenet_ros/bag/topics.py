"""Topic and message-type naming of the bag tool: the output kinds, the message types it reads
and writes, and where a camera's outputs and camera_info live."""

from __future__ import annotations

from refinenet_ros.segmenter import OUTPUT_KINDS

__all__ = [
    "CAMERA_INFO_TYPE",
    "COMPRESSED_TYPE",
    "IMAGE_TYPE",
    "OUTPUT_KINDS",
    "camera_info_topic",
    "output_base",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


def output_base(topic: str, msgtype: str) -> str:
    """Topic prefix for a camera's outputs: ``/cam/image_raw/compressed`` -> ``/cam/image_raw``."""
    if msgtype == COMPRESSED_TYPE and topic.endswith("/compressed"):
        return topic[: -len("/compressed")]
    return topic


def camera_info_topic(base: str) -> str:
    """The camera_info beside an image topic: ``/cam/image_raw`` -> ``/cam/camera_info``."""
    parent = base.rsplit("/", 1)[0]
    return f"{parent}/camera_info" if parent else "/camera_info"
