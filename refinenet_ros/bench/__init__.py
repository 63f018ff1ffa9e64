"""Where the milliseconds go: the benchmarks behind ``refinenet-ros bench``, one module each.

- :mod:`.model`: backend-only latency p50/p95, throughput and achieved GFLOP/s against this
  machine's FP32 peak, per backend, precision, network size and batch (what the network
  costs on this hardware, before any node or bag tool).
- :mod:`.node`: a publisher -> the ``segmentation_node`` executable -> a subscriber over
  shared-memory DDS; input->labels latency p50/p95/p99, throughput, drops, the node's own
  per-stage times from /diagnostics and node overhead = end-to-end - backend time (what a
  robot user sees).
- :mod:`.bag`: the bag tool's frames/s against backend-only frames/s on the same frames
  (whether offline processing keeps up with the network).
- :mod:`.fleet`: ``refinenet-ros fleet`` on Ray with one and two workers against the plain
  bag job in series over the same bags (what Ray costs, and how far workers scale).
- :mod:`.report`: the JSON envelope (machine, versions, settings) and the terminal table.

Each takes a frozen settings dataclass and returns its figures; the command line
(:mod:`refinenet_ros.cli.bench`) turns options into settings and prints. User-facing
failures raise :class:`BenchError`, one line, like every other layer's error.
"""

from __future__ import annotations

from refinenet_ros.errors import RefineNetRosError


class BenchError(RefineNetRosError):
    """A benchmark cannot run as asked (missing topic, node never came up, ...): the user's
    input or machine, said in one line, never a bug in this package."""


__all__ = ["BenchError"]
