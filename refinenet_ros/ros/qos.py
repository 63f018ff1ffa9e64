"""QoS profiles by name and incompatible-QoS callbacks that say how to fix the mismatch.

A best-effort camera and a reliable subscriber (rviz's default) silently never connect in
ROS 2; the anchors' users lose hours to it. Every publisher and subscription of the node
gets event callbacks that log the offending policy and the parameter or setting to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from rclpy.event_handler import (
        PublisherEventCallbacks,
        QoSRequestedIncompatibleQoSInfo,
        SubscriptionEventCallbacks,
    )
except ImportError:  # Humble (rclpy 3.x): the same classes, before their move to event_handler
    from rclpy.qos_event import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        PublisherEventCallbacks,
        QoSRequestedIncompatibleQoSInfo,
        SubscriptionEventCallbacks,
    )
from rclpy.qos import (
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_policy_name_from_kind,
    qos_profile_sensor_data,
)

QOS_NAMES = ("sensor_data", "reliable")


def qos_profile(name: str, depth: int = 1) -> QoSProfile:
    """``sensor_data``: best effort, keep last ``depth``; ``reliable``: reliable, keep last ``depth``.

    Depth 1 on both sides: the node only ever wants the newest frame.
    """
    if name == "sensor_data":
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
    elif name == "reliable":
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE
        )
    else:
        raise ValueError(f"qos {name!r} is not one of {', '.join(QOS_NAMES)}")
    return profile


def _fix(policy: str, ours: str, side: str) -> str:
    if policy == "RELIABILITY":
        if side == "subscription":
            return (
                f"this node subscribes with qos={ours}; the publisher is best effort while we "
                "ask reliable: set the node parameter qos:=sensor_data"
            )
        return (
            f"this node publishes with qos={ours} (best effort) and a subscriber asks for "
            "reliable: set qos:=reliable on the node, or make the subscriber best effort "
            "(rviz: Reliability Policy = Best Effort)"
        )
    return f"align the {policy} policy of both sides (this node uses qos={ours})"


def _incompatible_qos_logger(
    side: str, topic: str, qos_name: str, log: Callable[[str], object]
) -> Callable[[QoSRequestedIncompatibleQoSInfo], None]:
    """One event handler for either side: names the topic, the policy and the fix."""

    def on_incompatible(event: QoSRequestedIncompatibleQoSInfo) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        log(
            f"incompatible QoS on {side} {topic}: {policy} (seen {event.total_count} times); "
            f"{_fix(policy, qos_name, side)}"
        )

    return on_incompatible


# The two factories return Any: the callbacks' class lives in rclpy.event_handler from Iron
# on and in rclpy.qos_event on Humble, and create_subscription/create_publisher take it.
def subscription_callbacks(topic: str, qos_name: str, log: Callable[[str], object]) -> Any:
    """Event callbacks for a subscription on ``topic``: incompatible QoS logged with the fix."""
    return SubscriptionEventCallbacks(
        incompatible_qos=_incompatible_qos_logger("subscription", topic, qos_name, log)
    )


def publisher_callbacks(topic: str, qos_name: str, log: Callable[[str], object]) -> Any:
    """Event callbacks for a publisher on ``topic``: incompatible QoS logged with the fix."""
    return PublisherEventCallbacks(
        incompatible_qos=_incompatible_qos_logger("publisher", topic, qos_name, log)
    )
