"""The node's parameters: declared once with descriptors and ranges, read into a dataclass.

Everything a launch file or params file can set is listed in :data:`PARAMETERS`, so the
declaration, the ranges ``ros2 param describe`` shows, the validation and the defaults
cannot drift apart. Values are read on ``configure``; the cheap output switches
(:data:`LIVE`) also apply immediately when changed at runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from refinenet_ros.backends.base import BACKEND_KINDS, PRECISIONS
from refinenet_ros.backends.engine_cache import default_cache_dir
from refinenet_ros.config import DEFAULT_MODEL
from refinenet_ros.errors import RefineNetRosError

CHOICES: dict[str, tuple[str, ...]] = {
    "backend": BACKEND_KINDS,
    "precision": PRECISIONS,
    "output_resolution": ("input", "network"),
    "input_transport": ("raw", "compressed"),
    "qos": ("sensor_data", "reliable"),
}
LIVE = ("publish_color", "publish_overlay", "publish_confidence", "overlay_alpha", "max_input_age_ms")
"""Parameters that take effect at once; the others on the next configure."""


@dataclass
class NodeConfig:
    """The node's parameters as plain values (see :data:`PARAMETERS` for their meaning)."""

    model: str = DEFAULT_MODEL
    weights: str = ""
    labels: str = ""
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    engine_dir: str = field(default_factory=default_cache_dir)
    network_height: int = 0
    network_width: int = 0
    output_resolution: str = "input"
    input_transport: str = "raw"
    qos: str = "sensor_data"
    max_input_age_ms: float = 0.0
    publish_color: bool = True
    publish_overlay: bool = True
    publish_confidence: bool = True
    overlay_alpha: float = 0.5
    cameras: list[str] = field(default_factory=list)
    batch_timeout_ms: float = 10.0
    autostart: bool = True
    threads: int = 0
    max_image_pixels: int = 8192 * 8192
    diagnostics_window_s: float = 10.0

    @property
    def network_size(self) -> tuple[int, int] | None:
        if self.network_height > 0 and self.network_width > 0:
            return (self.network_height, self.network_width)
        return None


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"integer_range": [IntegerRange(from_value=lo, to_value=hi, step=1)]}


def _float(lo: float, hi: float) -> dict[str, Any]:
    return {"floating_point_range": [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]}


S, INT, D, B = (
    ParameterType.PARAMETER_STRING,
    ParameterType.PARAMETER_INTEGER,
    ParameterType.PARAMETER_DOUBLE,
    ParameterType.PARAMETER_BOOL,
)
# name -> (type, description, extra descriptor fields)
PARAMETERS: dict[str, tuple[int, str, dict[str, Any]]] = {
    "model": (S, "network architecture, e.g. lw_refinenet_mobilenetv2", {}),
    "weights": (
        S,
        "bundled weights name (camvid, indoor) or a checkpoint file; empty = the bundled model "
        "that fits model/labels (camvid by default); 'random' = seeded random weights (meaningless labels)",
        {},
    ),
    "labels": (S, "label set (camvid, indoor, cityscapes, voc, ...); empty = from the weights", {}),
    "seed": (INT, "seed of the random init without weights", _int(0, 2**31 - 1)),
    "backend": (S, "inference backend", {}),
    "device": (S, "auto, cpu, cuda, cuda:N", {}),
    "precision": (S, "numeric precision (auto: the fastest whose accuracy is known to hold)", {}),
    "engine_dir": (
        S,
        "cache of ONNX graphs, INT8 graphs and TensorRT engines "
        "(default $REFINENET_ROS_CACHE, else $ROS_HOME/refinenet_ros)",
        {},
    ),
    "network_height": (
        INT,
        "network input height; 0 = the weights' size (360 for camvid), else each image's own",
        _int(0, 8192),
    ),
    "network_width": (
        INT,
        "network input width; 0 = the weights' size (480 for camvid), else each image's own",
        _int(0, 8192),
    ),
    "output_resolution": (S, "size of the published images", {}),
    "input_transport": (S, "raw subscribes image, compressed image/compressed", {}),
    "qos": (S, "sensor_data = best effort, reliable = reliable (subscriptions and outputs)", {}),
    "max_input_age_ms": (
        D,
        "drop frames older than this (header stamp to processing); 0 = off",
        _float(0, 1e6),
    ),
    "publish_color": (B, "publish ~/color", {}),
    "publish_overlay": (B, "publish ~/overlay", {}),
    "publish_confidence": (B, "publish ~/confidence", {}),
    "overlay_alpha": (D, "opacity of the colours in ~/overlay", _float(0.0, 1.0)),
    "cameras": (ParameterType.PARAMETER_STRING_ARRAY, "camera namespaces; empty = one camera", {}),
    "batch_timeout_ms": (D, "how long to wait for the other cameras' frames to batch them", _float(0, 1000)),
    "autostart": (B, "configure and activate on start", {}),
    "threads": (INT, "CPU inference threads; 0 = library default", _int(0, 256)),
    "max_image_pixels": (
        INT,
        "frames above this many pixels are counted malformed, before decoding (default: twice 8K)",
        _int(1, 2**31 - 1),
    ),
    "diagnostics_window_s": (
        D,
        "/diagnostics levels reflect problems within this many seconds; no input for as long is a WARN",
        _float(0.5, 3600.0),
    ),
}
_READ_ONLY = ("autostart",)


class ParameterError(RefineNetRosError, ValueError):
    """Bad ``-p`` values at startup: one line per parameter naming its type and range."""


_TYPE_NAMES = {S: "string", INT: "integer", D: "double", B: "bool", ParameterType.PARAMETER_STRING_ARRAY:
               "string list"}  # fmt: skip


def expected(name: str) -> str:
    """What parameter ``name`` takes, in the words of ``-p name:=...``: type and range or choices."""
    ptype, _, extra = PARAMETERS[name]
    text = _TYPE_NAMES.get(ptype, "value")
    if "integer_range" in extra:
        r = extra["integer_range"][0]
        text += f" within {r.from_value}..{r.to_value}"
    elif "floating_point_range" in extra:
        r = extra["floating_point_range"][0]
        text += f" within {r.from_value}..{r.to_value}"
    if name in CHOICES:
        text += f", one of {', '.join(CHOICES[name])}"
    return text


def declare_parameters(node: Node) -> None:
    """Declare every parameter with its descriptor; defaults come from :class:`NodeConfig`.

    rclpy rejects a ``-p`` override of the wrong type or out of range with a traceback from
    inside ``declare_parameter``; here every such value is collected into one
    :class:`ParameterError` line naming the parameter, the value, its type and its range.
    """
    defaults = NodeConfig()
    problems: list[str] = []
    overrides = getattr(node, "_parameter_overrides", {})
    for name, (ptype, description, extra) in PARAMETERS.items():
        choices = CHOICES.get(name)
        if choices:
            description = f"{description} (one of {', '.join(choices)})"
        descriptor = ParameterDescriptor(
            name=name, type=ptype, description=description, read_only=name in _READ_ONLY, **extra
        )
        value: Any = getattr(defaults, name)
        if ptype == ParameterType.PARAMETER_STRING_ARRAY:
            value = Parameter.Type.STRING_ARRAY  # an empty list has no type of its own
        try:
            node.declare_parameter(name, value, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException):
            given = overrides.get(name)
            shown = given.value if given is not None else "?"
            hint = f" (write {shown}.0)" if ptype == D and isinstance(shown, int) else ""
            kind = expected(name)
            article = "an" if kind[0] in "aeiou" else "a"
            problems.append(f"-p {name}:={shown}: {name} takes {article} {kind}{hint}")
    if problems:
        raise ParameterError("; ".join(problems))


def read_config(node: Node) -> NodeConfig:
    """Current parameter values -> :class:`NodeConfig` (validated: raises ValueError)."""
    values: dict[str, Any] = {}
    for name in PARAMETERS:
        try:
            value = node.get_parameter(name).value
        except ParameterUninitializedException:  # a string array left at its empty default
            value = None
        values[name] = list(value or []) if name == "cameras" else value
    cfg = NodeConfig(**values)
    problems = [p for p in (check_value(k, getattr(cfg, k)) for k in CHOICES) if p]
    if (cfg.network_height > 0) != (cfg.network_width > 0):
        problems.append("set both network_height and network_width (or both to 0)")
    if cfg.network_size is not None and min(cfg.network_size) < 32:
        problems.append(f"network size {cfg.network_size} is below 32 pixels")
    if cfg.output_resolution == "network" and cfg.network_size is None:
        problems.append("output_resolution 'network' needs network_height and network_width")
    names = [c.strip("/") for c in cfg.cameras]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append(f"-p cameras:={cfg.cameras}: cameras must be distinct non-empty namespaces")
    problems += [p for p in (_camera_problem(c) for c in cfg.cameras if c.strip("/")) if p]
    problems += [p for p in [_engine_dir_problem(cfg.engine_dir)] if p]
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


def _camera_problem(name: str) -> str | None:
    """Why camera namespace ``name`` cannot prefix a ROS topic, or None (checked before any
    publisher exists, so a bad name fails configure with this line and leaks nothing)."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    try:
        validate_topic_name(f"{name.rstrip('/')}/image")
    except InvalidTopicNameException as exc:
        reason = str(exc).splitlines()[0].removeprefix("Invalid topic name: ").rstrip(":")
        return (
            f"-p cameras: {name!r} is not a valid ROS namespace ({reason}); "
            "use names like cam0 or /robot/front"
        )
    return None


def _engine_dir_problem(engine_dir: str) -> str | None:
    """A cache folder that cannot be one (a file, or under a file), named by its parameter."""
    path = Path(engine_dir).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                return f"-p engine_dir:={engine_dir}: {p} is a file, not a folder; give a writable folder"
            return None
    return None


def check_value(name: str, value: Any) -> str | None:
    """The problem with a choice parameter's value, or None when it is valid."""
    choices = CHOICES.get(name)
    if choices and value not in choices:
        return f"-p {name}:={value}: {name} must be one of {', '.join(choices)}"
    return None


def validate_change(params: list[Parameter]) -> SetParametersResult:
    """``add_on_set_parameters_callback`` hook: reject bad choices before they are stored."""
    for p in params:
        problem = check_value(p.name, p.value)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
    return SetParametersResult(successful=True)


_TABLE_TYPES = {
    S: "string",
    INT: "int",
    D: "double",
    B: "bool",
    ParameterType.PARAMETER_STRING_ARRAY: "string[]",
}


def parameter_table() -> str:
    """The README's parameter table, generated from :data:`PARAMETERS`, :class:`NodeConfig`'s
    defaults, :data:`CHOICES` and :data:`LIVE` (a test keeps the README equal to it)."""
    defaults = NodeConfig(engine_dir="$ROS_HOME/refinenet_ros")
    rows = [
        "| parameter | type | default | range / choices | live | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, (ptype, description, extra) in PARAMETERS.items():
        default = getattr(defaults, name)
        shown = (
            str(default).lower() if isinstance(default, bool) else repr(default) if default == "" else default
        )
        if "integer_range" in extra:
            r = extra["integer_range"][0]
            allowed = f"{r.from_value}..{r.to_value}"
        elif "floating_point_range" in extra:
            r = extra["floating_point_range"][0]
            allowed = f"{r.from_value:g}..{r.to_value:g}"
        else:
            allowed = ", ".join(CHOICES.get(name, ()))
        live = "yes" if name in LIVE else "on configure"
        rows.append(f"| `{name}` | {_TABLE_TYPES[ptype]} | `{shown}` | {allowed} | {live} | {description} |")
    return "\n".join(rows)
