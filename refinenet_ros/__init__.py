"""refinenet_ros: RefineNet semantic segmentation for ROS 2 camera streams.

The core (models, labels, segmenter, backends, bag/evaluate/train/bench) imports
without rclpy; only :mod:`refinenet_ros.ros` needs a ROS 2 installation.
"""

__version__ = "0.1.0"
