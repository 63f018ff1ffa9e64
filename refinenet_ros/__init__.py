"""refinenet_ros: RefineNet semantic segmentation for ROS 2 camera streams.

The core (models, labels, segmenter, backends, bag/evaluate/train/bench) imports
without rclpy; only :mod:`refinenet_ros.ros` needs a ROS 2 installation.

Python use, the way torchvision builders take a weights object::

    import refinenet_ros
    seg = refinenet_ros.load("camvid")          # bundled street model (or a checkpoint path)
    result = seg(rgb)                           # HxWx3 uint8 RGB
    result.labels, result.confidence            # HxW class ids, HxW max softmax
    result.color(), result.overlay()            # RGB renderings
    seg.label_set.classes                       # class names, in id order
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refinenet_ros.version import __version__

if TYPE_CHECKING:
    from refinenet_ros.segmenter import OutputResolution, Segmenter

__all__ = ["__version__", "load"]


def load(
    weights: str = "camvid",
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    network_size: tuple[int, int] | None = None,
    output_resolution: OutputResolution = "input",
    threads: int = 0,
    cache_dir: str | None = None,
) -> Segmenter:
    """A ready :class:`~refinenet_ros.segmenter.Segmenter` for bundled weights or a checkpoint.

    ``weights``: a bundled name (``refinenet-ros weights`` lists them), a checkpoint path,
    or ``"random"``. ``network_size`` (H, W) defaults to the one the weights record.
    ``backend``: ``auto`` (TensorRT with CUDA, else ONNX Runtime, else torch; on a CPU the
    fastest measured), or one by name. ``precision``: ``auto`` runs the fastest precision
    whose accuracy is known to hold (the weights' val mIoU record; INT8 from the ranges they
    ship), or one by name. Compiled graphs are cached in ``cache_dir`` (default
    ``~/.ros/refinenet_ros``); a first call that builds logs what it built and how long it took.
    """
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.backends.engine_cache import default_cache_dir
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.segmenter import build_segmenter

    options = BackendOptions(
        kind=backend,
        device=device,
        precision=precision,
        input_size=network_size,
        threads=threads,
        engine_dir=cache_dir or default_cache_dir(),
    )
    model_cfg = ModelConfig(weights=weights).resolved()
    return build_segmenter(model_cfg, options, output_resolution=output_resolution)
