"""``refinenet_segmentation``: the lifecycle node (the executable ``segmentation_node`` is :mod:`.main`).

configure builds the Segmenter (backend + model, engine build progress in the log);
activate creates the subscriptions, the lifecycle publishers start publishing and the
worker thread starts; deactivate stops both; cleanup frees the backend. ``autostart``
(default) walks it to active by itself for plain ``ros2 run``/launch use.

Callbacks never touch images: they drop the message into its camera's latest-frame slot.
The worker decodes, segments (one backend call for all cameras' frames), builds only the
outputs someone subscribes to, fills the reused messages in place and publishes them with
the input header. Malformed frames are counted and logged once per problem, never fatal.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from refinenet_ros.backends.prepare import BuildCancelled
from refinenet_ros.images.encodings import MalformedImage
from refinenet_ros.ros import node_log
from refinenet_ros.ros.diagnostics import LOW_CONFIDENCE, NodeStats, diagnostic_array, input_silence
from refinenet_ros.ros.messages import image_to_rgb
from refinenet_ros.ros.outputs import CameraIO, PublishSink
from refinenet_ros.ros.params import (
    LIVE,
    NodeConfig,
    declare_parameters,
    read_config,
    validate_change,
)
from refinenet_ros.ros.qos import publisher_callbacks, qos_profile, subscription_callbacks
from refinenet_ros.scheduling import Frame, LatestFrameSlots, Throttle
from refinenet_ros.segmenter import OUTPUT_KINDS, SegmentationResult, Segmenter

NODE_NAME = "refinenet_segmentation"
OUTPUTS = OUTPUT_KINDS


class ConfigureInterrupted(Exception):
    """SIGINT/SIGTERM arrived while configure was building the model or an engine."""


class SegmentationNode(LifecycleNode):
    """RefineNet semantic segmentation of one or more camera streams."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        post_set = getattr(self, "add_post_set_parameters_callback", None)  # Iron and later
        if post_set is not None:
            self.add_on_set_parameters_callback(validate_change)
            post_set(self._on_params_set)
        else:  # Humble: apply live values from the (only) on-set callback once they pass
            self.add_on_set_parameters_callback(self._validate_and_apply)
        # The package's log goes to this node's log, and its advice names parameters, while the
        # node exists (destroy_node detaches it).
        self._log_handler = node_log.attach(self)
        self.cfg = NodeConfig()  # read (and validated) on configure
        self.autostart = bool(self.get_parameter("autostart").value)
        self.segmenter: Segmenter | None = None
        self.cameras: list[CameraIO] = []
        self._subs: list[Subscription] = []
        self._slots = LatestFrameSlots(1)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = NodeStats()
        self._throttle = Throttle(5.0)
        self._info: dict[str, str] = {}
        self._state = "unconfigured"
        self._inputs: list[str] = []  # resolved input topics while active (diagnostics, logs)
        self._input_leaf = "image"
        self._active_since = 0.0
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)

    # ---- lifecycle -------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate every parameter, build the model (interruptible), create the publishers.

        Any failure logs one line naming the problem in parameter words, and releases
        everything created so far, so a failed configure can simply be retried.
        """
        try:
            self.cfg = read_config(self)
            self.segmenter = self._build_interruptibly(self.cfg)
            qos = qos_profile(self.cfg.qos)
            names = [c.strip() for c in self.cfg.cameras] or [""]
            self.cameras = []
            for name in names:
                cam = CameraIO(name)
                self.cameras.append(cam)  # before its publishers: _release() finds partial ones
                for leaf in OUTPUTS:
                    cam.publishers[leaf] = self._lifecycle_publisher(Image, cam.output(leaf), qos)
                cam.info_pub = self._lifecycle_publisher(CameraInfo, cam.output("labels/camera_info"), qos)
        except ConfigureInterrupted:
            if self.context.ok():  # else main() says it (the log can no longer reach /rosout)
                self.get_logger().warning("configure interrupted (shutdown requested); nothing kept")
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:
            self.get_logger().error(f"configure failed: {self._explain(exc)}")
            # A user's mistake needs only the line above; our own bug needs the traceback too.
            self.get_logger().debug("configure failed with:\n" + traceback.format_exc())
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._slots = LatestFrameSlots(len(self.cameras))
        self.stats = NodeStats()
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _explain(self, exc: Exception) -> str:
        """One line for a configure failure, in parameter words."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None:
            text = f"{exc.filename}: {exc.strerror or text}"
            if str(exc.filename).startswith(self.cfg.engine_dir):
                text += f" (the engine cache, -p engine_dir:={self.cfg.engine_dir})"
        return text

    def _build_interruptibly(self, cfg: NodeConfig) -> Segmenter:
        """Build the Segmenter, giving up within ~0.1 s of SIGINT/SIGTERM.

        A model export, INT8 calibration, compile or TensorRT build runs for seconds to minutes
        in C++ that holds the GIL, so no signal handler or thread of ours could act meanwhile.
        Those builds run in a child process (``cancelled`` below kills it; backends.child_build);
        a warm cache spawns nothing. For what still runs here, a watcher thread sees the
        shutdown, says "interrupted during configure" and ends the process (nothing is
        published yet; the kernel ends a build child with it). The Segmenter itself is built
        on this thread: on a helper thread, the torch backend's per-thread settings would be
        lost and multi-camera batching would break.
        """
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                if not self.context.ok():
                    print(f"{NODE_NAME}: interrupted during configure", file=sys.stderr)
                    _exit_now(0)

        threading.Thread(target=watch, name="refinenet-configure-watch", daemon=True).start()
        try:
            return self._build_segmenter(cfg)
        except (KeyboardInterrupt, BuildCancelled):  # rclpy chains SIGINT to Python's handler too
            raise ConfigureInterrupted from None
        finally:
            done.set()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        qos = qos_profile(self.cfg.qos)
        compressed = self.cfg.input_transport == "compressed"
        self._input_leaf = "image/compressed" if compressed else "image"
        warn = self.get_logger().warning
        for index, cam in enumerate(self.cameras):
            topic = cam.topic(self._input_leaf)
            self._subs.append(
                self.create_subscription(
                    CompressedImage if compressed else Image,
                    topic,
                    functools.partial(self._on_image, index),
                    qos,
                    event_callbacks=subscription_callbacks(self._resolved(topic), self.cfg.qos, warn),
                )
            )
            self._subs.append(
                self.create_subscription(
                    CameraInfo,
                    cam.topic("camera_info"),
                    functools.partial(self._on_camera_info, index, cam),
                    qos,
                    event_callbacks=subscription_callbacks(
                        self._resolved(cam.topic("camera_info")), self.cfg.qos, warn
                    ),
                )
            )
        self._slots.reopen()
        self._stop = threading.Event()  # one per activation: a worker outliving its join never resumes
        self._worker = threading.Thread(
            target=self._work, args=(self._stop,), name="refinenet-worker", daemon=True
        )
        self._worker.start()
        self._inputs = [self._resolved(c.topic(self._input_leaf)) for c in self.cameras]
        self._active_since = time.monotonic()
        self._state = "active"
        self.get_logger().info(f"active: segmenting {', '.join(self._inputs)}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: what deactivate and cleanup release, each a no-op if already done."""
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Destroy the node and detach the package's log from it, so that logging after this
        (another node in the same process, the shutdown path) does not reach a dead node."""
        handler = getattr(self, "_log_handler", None)  # absent when a parameter was refused
        if handler is not None:
            node_log.detach(handler)
        super().destroy_node()

    def _stop_inputs(self) -> None:
        """Stop the worker and unsubscribe (deactivate, and shutdown from active)."""
        self._stop_worker()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self) -> None:
        """Drop the publishers and the model; diagnostics then report no model at all."""
        for cam in self.cameras:
            for pub in cam.publishers.values():
                self.destroy_lifecycle_publisher(pub)
            if cam.info_pub is not None:
                self.destroy_lifecycle_publisher(cam.info_pub)
        self.cameras = []
        self.segmenter = None
        self._info = {}
        self._inputs = []
        self._state = "unconfigured"

    def _stop_worker(self) -> None:
        self._stop.set()
        self._slots.close()
        if self._worker is not None:
            # an inference in flight finishes in the background (daemon thread): exit stays < 2 s
            self._worker.join(timeout=1.0)
            self._worker = None

    # ---- setup -------------------------------------------------------------------------
    def _build_segmenter(self, cfg: NodeConfig) -> Segmenter:
        from refinenet_ros.backends.base import BackendOptions
        from refinenet_ros.config import ModelConfig
        from refinenet_ros.segmenter import build_segmenter

        model_cfg = ModelConfig(
            model=cfg.model or None, labels=cfg.labels or None, weights=cfg.weights or None, seed=cfg.seed,
            allow_random=False,
        )  # fmt: skip
        options = BackendOptions(
            kind=cfg.backend,
            device=cfg.device,
            precision=cfg.precision,
            input_size=cfg.network_size,
            max_batch=max(1, len(cfg.cameras)),
            threads=cfg.threads,
            engine_dir=cfg.engine_dir,
        )
        self.get_logger().info(f"configuring {model_cfg.describe()} on backend {cfg.backend} ...")
        t0 = time.monotonic()
        segmenter = build_segmenter(
            model_cfg,
            options,
            output_resolution=cfg.output_resolution,  # type: ignore[arg-type]
            cancelled=lambda: not self.context.ok(),
        )
        backend = segmenter.backend
        # what ran, and that auto chose it: "int8 (auto)"
        precision = str(getattr(backend, "precision", cfg.precision))
        if cfg.precision == "auto" and precision != "auto":
            precision = f"{precision} (auto)"
        self._info = {
            "model": model_cfg.describe(),
            "labels": segmenter.label_set.name,
            "backend": backend.name,
            "device": backend.device,
            "precision": precision,
            "network_size": "x".join(map(str, segmenter.network_size)) if segmenter.network_size else "input",
            "output_resolution": cfg.output_resolution,
        }
        self.get_logger().info(
            f"backend {backend.name} {precision} on {backend.device} ready in {time.monotonic() - t0:.1f} s "
            f"({segmenter.label_set.num_classes} classes)"
        )
        return segmenter

    def _lifecycle_publisher(self, msg_type: Any, topic: str, qos: Any) -> LifecyclePublisher:
        """A lifecycle publisher whose incompatible-QoS events are logged with the fix."""
        events = publisher_callbacks(self._resolved(topic), self.cfg.qos, self.get_logger().warning)
        publisher = self.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=events)
        return cast(LifecyclePublisher, publisher)  # Humble annotates it as a plain Publisher

    def _resolved(self, topic: str) -> str:
        """Fully qualified topic name (after namespace and remapping), for log messages."""
        try:
            return self.resolve_topic_name(topic)
        except Exception:  # invalid names fail later with rclpy's own message
            return topic

    def _validate_and_apply(self, params: list[Parameter]) -> SetParametersResult:
        result = validate_change(params)
        if result.successful:
            self._on_params_set(params)
        return result

    def _on_params_set(self, params: list[Parameter]) -> None:
        for p in params:
            if p.name in LIVE:
                setattr(self.cfg, p.name, p.value)

    # ---- callbacks (never block) ---------------------------------------------------------
    def _on_image(self, camera: int, msg: Image | CompressedImage) -> None:
        self.stats.rate_in.tick()
        self.stats.last_input_t = time.monotonic()
        self.stats.transport.image(camera, _stamp_ns(msg), self.stats.last_input_t)
        self._slots.put(Frame(camera, msg, time.monotonic()))

    def _on_camera_info(self, camera: int, cam: CameraIO, msg: CameraInfo) -> None:
        cam.camera_info = msg
        self.stats.transport.info(camera, _stamp_ns(msg), time.monotonic())

    # ---- worker --------------------------------------------------------------------------
    def _work(self, stop: threading.Event) -> None:
        timeout = self.cfg.batch_timeout_ms / 1e3
        while not stop.is_set():
            frames = self._slots.take(0.25, timeout)
            if not frames:
                continue
            try:
                self._process(frames, stop)
            except Exception as exc:
                self.stats.errors += 1
                self.stats.last_error_t = time.monotonic()
                self.stats.last_problem = f"{type(exc).__name__}: {exc}"
                if self._throttle.allow(f"error:{type(exc).__name__}"):
                    self.get_logger().error(f"processing failed: {self.stats.last_problem}")

    def _age_ms(self, msg: Image | CompressedImage) -> float | None:
        stamp_ns = _stamp_ns(msg)
        if stamp_ns == 0:
            return None  # unstamped: age unknown
        now = self.get_clock().now().nanoseconds
        return (now - stamp_ns) / 1e6

    def _wanted(self, cam: CameraIO) -> dict[str, bool]:
        cfg = self.cfg
        enabled = {
            "labels": True,
            "color": cfg.publish_color,
            "overlay": cfg.publish_overlay,
            "confidence": cfg.publish_confidence,
        }
        wanted = {k: on and cam.publishers[k].get_subscription_count() > 0 for k, on in enabled.items()}
        assert cam.info_pub is not None
        wanted["camera_info"] = cam.info_pub.get_subscription_count() > 0
        return wanted

    def _process(self, frames: Sequence[Frame], stop: threading.Event) -> None:
        stats = self.stats
        max_age = self.cfg.max_input_age_ms
        todo: list[tuple[Frame, npt.NDArray[np.uint8], dict[str, bool]]] = []
        t0 = time.perf_counter()
        for frame in frames:
            cam = self.cameras[frame.camera]
            age = self._age_ms(frame.msg)
            if age is not None:
                stats.input_age_ms.add(age)
                if max_age > 0 and age > max_age:
                    stats.stale += 1
                    continue
            wanted = self._wanted(cam)
            if not any(wanted.values()):
                stats.unsubscribed += 1
                continue
            try:
                rgb = image_to_rgb(frame.msg, self.cfg.max_image_pixels)
            except MalformedImage as exc:
                stats.malformed += 1
                stats.last_malformed_t = time.monotonic()
                stats.last_problem = str(exc)
                topic = self._resolved(cam.topic(self._input_leaf))
                if self._throttle.allow(f"{frame.camera}:{exc}"):
                    self.get_logger().error(f"dropping frame from {topic}: {exc}")
                continue
            todo.append((frame, rgb, wanted))
        if not todo:
            return
        t1 = time.perf_counter()
        stats.stages["decode"].add((t1 - t0) * 1e3 / len(todo))
        segmenter = self.segmenter
        if segmenter is None:  # cleaned up meanwhile
            return
        results = segmenter.segment_batch([rgb for _, rgb, _ in todo])
        stats.backend_calls += 1
        stats.largest_batch = max(stats.largest_batch, len(todo))
        timings = results[0].timings_ms
        for stage in ("preprocess", "infer", "postprocess"):
            stats.stages[stage].add(timings[stage])
        for (frame, rgb, wanted), result in zip(todo, results, strict=True):
            if stop.is_set():  # deactivated or shutting down while inferring
                return
            unsure = np.count_nonzero(result.confidence < LOW_CONFIDENCE) / max(1, result.confidence.size)
            stats.low_confidence.add(unsure)
            t2 = time.perf_counter()
            publish_s = self._publish(self.cameras[frame.camera], frame.msg.header, rgb, result, wanted)
            total_ms = (time.perf_counter() - t2) * 1e3
            stats.stages["render"].add(total_ms - publish_s * 1e3)
            stats.stages["publish"].add(publish_s * 1e3)
            stats.frames_out += 1
            stats.rate_out.tick()
            age = self._age_ms(frame.msg)
            if age is not None:
                stats.latency_ms.add(age)

    def _publish(
        self,
        cam: CameraIO,
        header: Header,
        rgb: npt.NDArray[np.uint8],
        result: SegmentationResult,
        wanted: dict[str, bool],
    ) -> float:
        """Render each wanted output into its reusable message (no per-frame allocation) and
        publish it at once, labels first, so the output most consumers need never waits for
        the rendered ones.

        Returns the seconds spent inside rclpy ``publish`` calls (serialisation + DDS); the
        rest of the call is rendering, and the diagnostics report the two apart."""
        sink = PublishSink(cam, header, result, wanted["camera_info"])
        kinds = [k for k in OUTPUTS if wanted[k]]
        result.render(sink, kinds, rgb, float(self.cfg.overlay_alpha))
        return sink.publish_s

    # ---- diagnostics ---------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        counters = self._slots.counters
        msg = diagnostic_array(
            self.get_clock().now().to_msg(),
            f"{self.get_fully_qualified_name()}: segmentation",
            self._info.get("device", "unconfigured"),
            self.stats,
            frames_in=sum(c.received for c in counters),
            skipped=sum(c.skipped for c in counters),
            info=self._info,
            state=self._state,
            inputs=self._inputs,
            window_s=self.cfg.diagnostics_window_s,
            active_since=self._active_since,
        )
        self._diag_pub.publish(msg)
        if self._state == "active":
            silence = input_silence(
                self.stats, self._active_since, self.cfg.diagnostics_window_s, time.monotonic()
            )
            if silence is not None:
                self.get_logger().warning(
                    f"no image for {silence:.0f} s on {', '.join(self._inputs)}: is the camera publishing "
                    "there? (check the topic name or remapping, -p input_transport, and the QoS)",
                    throttle_duration_sec=30.0,
                )


def _stamp_ns(msg: Image | CompressedImage | CameraInfo) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _exit_now(code: int) -> None:
    """Exit in the middle of a model build, flushing Python's and C's buffers
    first (rcutils writes the log through C stdio, which ``os._exit`` would drop)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)
