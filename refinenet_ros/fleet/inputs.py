"""Which bags a fleet run segments, and where each one's output goes.

An input is a rosbag2 folder (it holds ``metadata.yaml``), a bare ``.mcap`` / ``.db3``
file, a folder searched recursively for both, or a text file listing any of these (one
a line, ``#`` comments, paths relative to the list). Each bag's output keeps the bag's
path relative to the folder it was found in, so a recorded tree maps onto DIR one to one;
a bare file's output is a bag folder named after the file without its suffix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from refinenet_ros.errors import RefineNetRosError

BAG_SUFFIXES: tuple[str, ...] = (".mcap", ".db3")


class FleetError(RefineNetRosError, ValueError):
    """A user error about the fleet run (inputs, DIR, flags); the text names the fix."""


@dataclass(frozen=True)
class BagInput:
    """One input bag: where it is and the output's path relative to DIR (POSIX, no suffix)."""

    path: Path
    rel: str

    def output(self, out_dir: Path) -> Path:
        return out_dir.joinpath(*PurePosixPath(self.rel).parts)


def is_bag_folder(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def is_bag_file(path: Path) -> bool:
    return path.is_file() and path.suffix in BAG_SUFFIXES


def discover(inputs: Iterable[str | os.PathLike[str]], out_dir: Path) -> list[BagInput]:
    """Every bag the inputs name, in a stable order, each with a distinct output path.

    Hidden entries (a bag job's ``.NAME.partial-*`` stage folders among them) and DIR
    itself, when it lies inside an input folder, are never searched: a rerun must not
    take last run's outputs for new inputs.
    """
    out_abs = out_dir.resolve()
    found: list[BagInput] = []
    for item in inputs:
        if Path(item).resolve() == out_abs:
            raise FleetError(
                f"--out {out_dir} is the input folder {item}: outputs would land among the inputs; "
                "choose another --out"
            )
        found.extend(_expand(Path(item), out_abs, from_list=False))
    by_rel: dict[str, BagInput] = {}
    for bag in found:
        other = by_rel.get(bag.rel)
        if other is not None and other.path.resolve() != bag.path.resolve():
            raise FleetError(
                f"{other.path} and {bag.path} would both be written to {bag.output(out_dir)}; "
                "give their parent folder instead, so each keeps its own relative path"
            )
        by_rel.setdefault(bag.rel, bag)
    for bag in by_rel.values():
        src = bag.path.resolve()
        if out_abs == src or out_abs.is_relative_to(src):
            raise FleetError(
                f"--out {out_dir} is inside the input bag {bag.path}; choose a folder outside it"
            )
    return sorted(by_rel.values(), key=lambda b: b.rel)


def _expand(path: Path, out_abs: Path, *, from_list: bool) -> Iterator[BagInput]:
    if not path.exists():
        raise FleetError(f"input {path} does not exist")
    if is_bag_folder(path):
        yield BagInput(path, path.resolve().name)
    elif is_bag_file(path):
        yield BagInput(path, path.resolve().stem)
    elif path.is_dir():
        bags = list(_walk(path, out_abs))
        if not bags:
            raise FleetError(f"input folder {path} holds no rosbag2 folder, .mcap or .db3 file")
        yield from bags
    elif from_list:
        raise FleetError(f"{path} (listed in an input list) is not a bag folder, .mcap/.db3 file or folder")
    else:
        yield from _read_list(path, out_abs)


def _walk(root: Path, out_abs: Path) -> Iterator[BagInput]:
    """Bags under ``root``: a bag folder is not searched further, bare files are bags."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith(".") or sub.resolve() == out_abs:
                continue
            if is_bag_folder(sub):
                yield BagInput(sub, sub.relative_to(root).as_posix())
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = here / name
            if not name.startswith(".") and f.suffix in BAG_SUFFIXES:
                yield BagInput(f, f.relative_to(root).with_suffix("").as_posix())


def _read_list(path: Path, out_abs: Path) -> Iterator[BagInput]:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise FleetError(f"input {path} is neither a bag, a folder nor a text file listing bags") from None
    entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    entries = [e for e in entries if e]
    if not entries:
        raise FleetError(f"input list {path} names no bags")
    for entry in entries:
        p = Path(entry).expanduser()
        yield from _expand(p if p.is_absolute() else path.parent / p, out_abs, from_list=True)
