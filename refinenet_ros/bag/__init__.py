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

The package exports what a caller needs to run the job (``run_bag`` with ``BagOptions``,
``check_input`` before loading a model, ``overlap_helps`` to size the pipeline) and what
the command line offers; the pipeline's tuning knobs stay in their modules.
"""

from refinenet_ros.bag.job import check_input, run_bag
from refinenet_ros.bag.options import DEFAULT_MAX_PIXELS, STORAGES, BagError, BagOptions, BagSummary
from refinenet_ros.bag.pipeline import overlap_helps
from refinenet_ros.bag.sample import write_sample_bag
from refinenet_ros.bag.topics import OUTPUT_KINDS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OUTPUT_KINDS",
    "STORAGES",
    "BagError",
    "BagOptions",
    "BagSummary",
    "check_input",
    "overlap_helps",
    "run_bag",
    "write_sample_bag",
]
