"""Ray for a fleet run: where and how wide to run (:class:`FleetSettings`), importing Ray,
starting an embedded local instance or joining a cluster, in a way a Ctrl-C or SIGTERM
cannot cut in half."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from refinenet_ros.fleet.inputs import FleetError
from refinenet_ros.io import signals_deferred

log = logging.getLogger("refinenet_ros")

LOCAL_OBJECT_STORE_BYTES = 256 << 20
"""Embedded Ray's object store: workers return a small dict per bag, never images, so
the default (30 % of RAM) would only take memory from the model."""
CONNECT_TIMEOUT_S = 10.0
"""How long ``--address HOST:PORT`` may take to answer before the run gives up (Ray itself
retries for many minutes behind pages of warnings)."""


@dataclass(frozen=True)
class FleetSettings:
    """Where and how wide to run (resolved once from the command line)."""

    address: str | None = None
    """None: start an embedded local Ray; ``auto`` or ``HOST:PORT`` / ``ray://…``: join a cluster."""
    workers: int = 0
    """0: as many as the cluster's free CPUs (GPUs) fit."""
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    retries: int = 3
    """Ray task retries of a bag whose worker died (the bag's own errors are never retried)."""
    progress: bool = True
    poll_s: float = 0.5


def init_ray(settings: FleetSettings) -> None:
    """Start an embedded local Ray sized for ``settings`` (or join ``settings.address``), as
    :func:`run_fleet` does when this process is not connected yet; public so ``bench fleet``
    can start (and time) exactly the Ray a fleet run gets, apart from the run itself."""

    if settings.address is None:
        cpus = os.cpu_count() or 1
        want = settings.workers * settings.threads_per_worker
        if want > cpus:
            log.warning(
                "--workers %d x --threads-per-worker %d = %d CPUs on a %d-CPU machine: workers will "
                "share cores",
                settings.workers,
                settings.threads_per_worker,
                want,
                cpus,
            )
        _ray_init_shielded(
            num_cpus=max(cpus, want),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        )
    else:
        check_address(settings.address)
        try:
            _ray_init_shielded(address=settings.address)
        except ConnectionError as exc:
            raise FleetError(_no_cluster(settings.address, f" ({exc})")) from None


def _no_cluster(address: str, why: str) -> str:
    return (
        f"--address {address}: no Ray cluster answers there{why}; start one with "
        "`ray start --head` or leave out --address for a local run"
    )


def check_address(address: str) -> None:
    """Fail in seconds when a ``HOST:PORT`` Ray address does not accept a connection."""
    problem = _unreachable(address)
    if problem is not None:
        raise FleetError(_no_cluster(address, f" within {CONNECT_TIMEOUT_S:.0f} s ({problem})"))


def _unreachable(address: str) -> str | None:
    """Why a ``HOST:PORT`` Ray address does not accept a connection within
    :data:`CONNECT_TIMEOUT_S`, else None (other forms, ``auto`` and ``ray://``, are Ray's to try)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def import_ray() -> Any:
    """Import Ray for a fleet run, leaving Ray's C++ crash handler out of this process.

    That handler also catches SIGTERM and ends the process with a stack dump before any
    cleanup runs (no "terminated", a half-run stage folder). Ray reads
    ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` once, when it is first imported, so this sets it
    first unless the environment already does (set it to 0 to have Ray's crash stacks back).
    Raises ImportError where Ray is not installed."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray

    return ray


def _ray_init_shielded(**kwargs: Any) -> None:
    """``ray.init`` that a Ctrl-C or SIGTERM cannot cut in half.

    An exception raised by a signal handler in the middle of ``ray.init`` leaves Ray's
    half-built driver behind, which can hang or abort this process at exit instead of it
    ending as "interrupted"/"terminated". So both signals are held while Ray starts (and Ray
    is kept from swapping in its own SIGTERM handler, a ``sys.exit(15)`` that would strike
    anywhere in it); a held signal is delivered once ``ray.init`` is over, and Ray is shut
    down again before its exception leaves here. Ray must start on the main thread: the
    processes it starts are tied to the thread that started them."""
    ray = import_ray()
    utils = getattr(ray._private, "utils", None)
    ray_sets_handler = getattr(utils, "set_sigterm_handler", None)
    try:
        with signals_deferred():
            if ray_sets_handler is not None:
                utils.set_sigterm_handler = _leave_sigterm_alone  # type: ignore[union-attr]
            try:
                ray.init(**kwargs)
            finally:
                if ray_sets_handler is not None:
                    utils.set_sigterm_handler = ray_sets_handler  # type: ignore[union-attr]
    except KeyboardInterrupt:  # Ctrl-C, or the command line's SIGTERM exception
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise


def _leave_sigterm_alone(handler: object) -> None:
    """Stands in for Ray's SIGTERM installer while :func:`_ray_init_shielded` runs."""
