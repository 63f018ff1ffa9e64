"""What a bag run is asked to do (:class:`BagOptions`), what it did (:class:`BagSummary`), and
its user error (:class:`BagError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refinenet_ros.bag.topics import OUTPUT_KINDS
from refinenet_ros.errors import RefineNetRosError

STORAGES: tuple[str, ...] = ("mcap", "sqlite3")
DEFAULT_MAX_PIXELS = 8192 * 8192
"""= ``encodings.DEFAULT_MAX_PIXELS`` (kept here so ``--help`` needs no OpenCV; a test pins them)."""


class BagError(RefineNetRosError, ValueError):
    """A user error about the bags (missing topic, existing output); the text says the fix."""


@dataclass(frozen=True)
class BagOptions:
    """What to read and write; the model and backend live in the Segmenter."""

    image_topics: tuple[str, ...]
    outputs: tuple[str, ...] = OUTPUT_KINDS
    copy: bool = True
    storage: str = "mcap"
    force: bool = False
    batch: int = 4
    alpha: float = 0.5
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Frames above this many pixels are skipped as malformed before they are decoded
    (a 775 KB PNG can claim 16000x16000 and cost GBs)."""
    overlap: bool = True
    """Read + decode and segment on two threads while this one renders and writes
    (``refinenet-ros bag`` decides with :func:`overlap_helps`)."""


@dataclass
class BagSummary:
    """What a run did; ``fps`` counts segmented frames per wall-clock second."""

    output: Path
    frames: int = 0
    malformed: int = 0
    seconds: float = 0.0
    copied: int = 0
    written: int = 0
    bag_seconds: float = 0.0
    frames_per_topic: dict[str, int] = field(default_factory=dict)
    malformed_per_topic: dict[str, int] = field(default_factory=dict)
    output_topics: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        """Recorded duration / processing time: > 1 means faster than real time."""
        return self.bag_seconds / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"{self.frames} frames segmented in {self.seconds:.1f} s ({self.fps:.2f} frames/s, "
            f"{self.realtime_factor:.2f}x real time), {self.malformed} malformed skipped, "
            f"{self.copied} messages copied, {self.written} written -> {self.output}"
        ]
        for topic, n in self.frames_per_topic.items():
            bad = self.malformed_per_topic.get(topic, 0)
            lines.append(f"  {topic}: {n} frames" + (f", {bad} malformed" if bad else ""))
        return "\n".join(lines)
