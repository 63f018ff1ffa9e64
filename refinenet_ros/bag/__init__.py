"""Segment the camera topics of a recorded rosbag2 and write them back as new topics
(``refinenet-ros bag``, :mod:`refinenet_ros.cli.bag`), split by job:

- :mod:`~refinenet_ros.bag.topics`: output kinds, message types, topic naming
- :mod:`~refinenet_ros.bag.options`: what a run is asked (``BagOptions``), what it did
  (``BagSummary``), its user error (``BagError``)
- :mod:`~refinenet_ros.bag.cdr`: a segmented frame -> output messages (CDR written in place)
- :mod:`~refinenet_ros.bag.pipeline`: the generic threaded read/segment pipeline
- :mod:`~refinenet_ros.bag.output`: the staged, locked output folder renamed into place
- :mod:`~refinenet_ros.bag.job`: the job itself (``run_bag``, ``check_input``)
- :mod:`~refinenet_ros.bag.sample`: small synthetic bags for tests and benchmarks
"""

from refinenet_ros.bag.job import (
    COPY_CHUNK_BYTES,
    COPY_CHUNK_MESSAGES,
    MAX_REPORTED_MALFORMED,
    check_input,
    find_cameras,
    run_bag,
)
from refinenet_ros.bag.options import DEFAULT_MAX_PIXELS, STORAGES, BagError, BagOptions, BagSummary
from refinenet_ros.bag.pipeline import OVERLAP_DEPTH, POLL_S, overlap_helps
from refinenet_ros.bag.sample import write_sample_bag
from refinenet_ros.bag.topics import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    OUTPUT_KINDS,
    camera_info_topic,
    output_base,
)

__all__ = [
    "CAMERA_INFO_TYPE",
    "COMPRESSED_TYPE",
    "COPY_CHUNK_BYTES",
    "COPY_CHUNK_MESSAGES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_TYPE",
    "MAX_REPORTED_MALFORMED",
    "OUTPUT_KINDS",
    "OVERLAP_DEPTH",
    "POLL_S",
    "STORAGES",
    "BagError",
    "BagOptions",
    "BagSummary",
    "camera_info_topic",
    "check_input",
    "find_cameras",
    "output_base",
    "overlap_helps",
    "run_bag",
    "write_sample_bag",
]
