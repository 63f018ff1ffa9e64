"""Pixels in and out, without ROS: camera message payloads (``sensor_msgs`` encodings,
compressed frames) <-> HxWx3 uint8 RGB arrays.

The node, the bag tool, teacher labelling and INT8 calibration decode the same way through
:mod:`refinenet_ros.images.encodings`, which takes a message's fields as plain values, so the
offline tools never need rclpy.
"""
