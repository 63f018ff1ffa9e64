"""Segment many recorded bags on Ray, exactly once, resumable (``refinenet-ros fleet``).

The library part: :func:`discover` finds the bags, :func:`run_fleet` runs them on Ray
workers that each hold one Segmenter and run the ordinary bag job (so each output is
byte-identical to ``refinenet-ros bag``), with a manifest in the output folder that
makes reruns skip what is done. Ray itself is imported only when a run starts
(``pip install refinenet_ros[fleet]``); the command line lives in :mod:`refinenet_ros.cli.fleet`.
"""

from refinenet_ros.fleet.cluster import FleetSettings
from refinenet_ros.fleet.inputs import BagInput, FleetError, discover
from refinenet_ros.fleet.manifest import MANIFEST_NAME, SUMMARY_NAME, Manifest
from refinenet_ros.fleet.runner import FleetProgress, FleetSummary, run_fleet
from refinenet_ros.fleet.worker import FleetJob

__all__ = [
    "MANIFEST_NAME",
    "SUMMARY_NAME",
    "BagInput",
    "FleetError",
    "FleetJob",
    "FleetProgress",
    "FleetSettings",
    "FleetSummary",
    "Manifest",
    "discover",
    "run_fleet",
]
