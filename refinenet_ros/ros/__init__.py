"""ROS 2 side of refinenet_ros: message conversions, scheduling and the segmentation node.

Only :mod:`refinenet_ros.ros.node` (and the demo) import rclpy; :mod:`.encodings` is pure
numpy/OpenCV so offline tools (bag, calibration) can decode images without ROS.
"""
