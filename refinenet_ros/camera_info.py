"""CameraInfo rescaling from the received image's size to the label image's size.

One implementation for the node (rclpy messages) and the bag tool (rosbags messages):
it duck-types the message (``k``, ``p``, ``roi``, …), so it imports no ROS package and
fills whichever CameraInfo class the caller hands in as ``out``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

InfoT = TypeVar("InfoT")


def scale_camera_info(
    info: Any, image_size: tuple[int, int], label_size: tuple[int, int], out: InfoT
) -> InfoT:
    """Fill ``out`` with ``info`` (for an image of ``image_size`` (H, W)) seen at ``label_size``.

    Scales K, P (focal lengths, principal point, Tx/Ty) and the ROI like image_proc's
    resize; D and R are resolution independent. The header is kept (the caller sets the
    input image's). ``image_size`` is the size of the image actually received, which is
    what the intrinsics must describe (after any binning/ROI of the driver).
    """
    sy = label_size[0] / image_size[0]
    sx = label_size[1] / image_size[1]
    o: Any = out
    o.header = info.header
    o.height, o.width = label_size
    o.distortion_model = info.distortion_model
    o.d = info.d
    o.r = info.r
    k = np.array(info.k, dtype=np.float64)
    k[[0, 1, 2]] *= sx
    k[[3, 4, 5]] *= sy
    o.k = k
    p = np.array(info.p, dtype=np.float64)
    p[[0, 1, 2, 3]] *= sx
    p[[4, 5, 6, 7]] *= sy
    o.p = p
    o.binning_x, o.binning_y = info.binning_x, info.binning_y
    roi = info.roi
    o.roi.x_offset = round(roi.x_offset * sx)
    o.roi.y_offset = round(roi.y_offset * sy)
    o.roi.width = round(roi.width * sx)
    o.roi.height = round(roi.height * sy)
    o.roi.do_rectify = roi.do_rectify
    return out
