"""ROS 2 side of refinenet_ros: the segmentation node and its ROS glue (parameters, QoS,
messages, diagnostics, launching, the node's process environment).

Decoding pixels (:mod:`refinenet_ros.images`) and scheduling frames
(:mod:`refinenet_ros.scheduling`) need no ROS and live outside this package; the offline
tools (bag, calibration, labelling) never import it.
"""
