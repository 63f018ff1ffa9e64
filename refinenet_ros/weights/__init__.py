"""Bundled trained weights as first-class objects (the way torchvision names its weights).

Each :class:`Weights` entry names one checkpoint shipped inside the package, with what a
user needs to trust and use it: the architecture and label set it was trained for, the
preprocessing it expects (mean/std, network size), how it was trained (recipe and the
one command), what it scores (val mIoU and per-class IoU) and where its parts come from
(data set, backbone initialisation, licences). ``refinenet-ros weights`` lists them;
every entry point takes a registry name wherever it takes a checkpoint path
(``--weights camvid``, ``weights: camvid``).

The checkpoint files are stored in fp16 (half the size; the val mIoU is unchanged, see
docs/accuracy.md) and loaded into fp32 models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.labels import LabelSet, get_label_set

__all__ = ["DEFAULT_WEIGHTS", "WEIGHTS", "Weights", "WeightsError", "get_weights", "weights_for"]


class WeightsError(RefineNetRosError, ValueError):
    """A weights name that is not in the registry, or a bundled file that is missing."""


@dataclass(frozen=True)
class Weights:
    """One bundled checkpoint and its metadata (see the module docstring)."""

    name: str
    file: str
    model: str
    labels: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    network_size: tuple[int, int]
    description: str
    recipe: str
    command: str
    dataset: str
    backbone: str
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the model whose labels it learnt, for weights trained without human labels ("": none);
    #: its figures are then agreement with that teacher, not accuracy against people
    teacher: str = ""
    #: sha256 of the shipped file, checked whenever it is used (empty: not checked)
    sha256: str = ""

    @property
    def path(self) -> Path:
        """The checkpoint file inside the installed package (pip and colcon alike), checked
        against its recorded sha256: a damaged copy would load and give other labels."""
        path = Path(str(resources.files(__package__).joinpath(self.file)))
        if not path.is_file():
            raise WeightsError(
                f"bundled weights {self.name!r}: {path} is missing from this installation; "
                "reinstall refinenet_ros (pip install . / colcon build)"
            )
        if self.sha256:
            st = path.stat()
            actual = _file_sha256(str(path), st.st_size, st.st_mtime_ns)
            if actual != self.sha256:
                raise WeightsError(
                    f"bundled weights {self.name!r}: {path} is damaged (sha256 {actual[:12]}..., expected "
                    f"{self.sha256[:12]}...); reinstall refinenet_ros (pip install . / colcon build)"
                )
        return path

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.labels)

    def summary(self) -> str:
        miou = self.metrics.get("val_miou")
        agreement = self.metrics.get("teacher_agreement_miou")
        score = f", val mIoU {100 * miou:.1f} %" if isinstance(miou, float) else ""
        if isinstance(agreement, float):
            score = f", mIoU against its teacher's labels {100 * agreement:.1f} %"
        h, w = self.network_size
        return f"{self.name}: {self.model} [{self.labels}] at {h}x{w}{score}"


#: CamVid val (101 frames of 0016E5, never trained on), torch FP32 at 360x480, this file's
#: fp16-stored weights; every backend and precision in docs/accuracy.md. The IDD-Lite figure is
#: the level-1 (7 coarse classes) mIoU on the 183 frames of the held-out ``train_holdout`` split,
#: at 360x480: roads, cameras and cities that CamVid does not have.
_CAMVID_METRICS: dict[str, Any] = {
    "dataset": "CamVid val (101 frames)",
    "val_miou": 0.7124,
    "pixel_accuracy": 0.9323,
    "per_class_iou": {
        "sky": 0.9376, "building": 0.8624, "pole": 0.1722, "road": 0.9575, "pavement": 0.8514,
        "tree": 0.9031, "sign/symbol": 0.4907, "fence": 0.6356, "car": 0.8134, "pedestrian": 0.48,
        "bicyclist": 0.7329,
    },
    "idd_lite_holdout_coarse_miou": 0.6571,
}  # fmt: skip

#: Agreement with the teacher's labels on the 600 held-out Places365 photographs
#: (``places/eval``, never trained on; 200 of them chose the checkpoint), ONNX Runtime FP32
#: at 288x384 (the fp16-stored file scores the same 42.87). Not accuracy: no human labelled
#: these pixels.
_INDOOR_METRICS: dict[str, Any] = {
    "dataset": "teacher labels of 600 held-out Places365 indoor photographs",
    "teacher_agreement_miou": 0.4287,
    "pixel_agreement": 0.6665,
    "per_class_agreement_iou": {
        "wall": 0.5566, "floor": 0.6747, "ceiling": 0.5787, "door": 0.2275, "window": 0.473,
        "stairs": 0.3945, "person": 0.5078, "chair": 0.3843, "table": 0.3219, "sofa": 0.3078,
        "bed": 0.5811, "cabinet": 0.4488, "screen": 0.1744, "other": 0.3711,
    },
}  # fmt: skip

WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights(
            name="camvid",
            file="lw_refinenet_mobilenetv2_camvid.pt",
            model="lw_refinenet_mobilenetv2",
            labels="camvid",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            network_size=(360, 480),
            description="street scenes, 11 CamVid classes (sky, building, pole, road, pavement, tree, "
            "sign/symbol, fence, car, pedestrian, bicyclist)",
            recipe="config/train_camvid_v2.yaml",
            command="refinenet-ros train --config config/train_camvid_v2.yaml --out runs/camvid_v2",
            dataset="CamVid, 11-class SegNet release, train split (367 frames; Brostow, Fauqueur, "
            "Cipolla, ECCV 2008 / PRL 2009; research use) with IDD-Lite train (1,220 frames of Indian "
            "roads, 7 coarse level-1 classes learnt through unions of the 11; Varma et al., WACV 2019; "
            "research use, non-commercial); IDD-Lite's train_holdout sequences never trained on",
            backbone="ImageNet MobileNetV2 1.0/224 from TensorFlow's quantised TFLite model "
            "(google-coral/test_data, Apache-2.0), dequantised",
            metrics=_CAMVID_METRICS,
            sha256="c07c31454963436d0da38de7982bfb8e2e4974c318d27f3d2819b507bbd1055f",
        ),
        Weights(
            name="indoor",
            file="lw_refinenet_mobilenetv2_indoor.pt",
            model="lw_refinenet_mobilenetv2",
            labels="indoor",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            network_size=(288, 384),
            description="rooms, 14 indoor classes (wall, floor, ceiling, door, window, stairs, person, "
            "chair, table, sofa, bed, cabinet, screen, other); learnt from a teacher's labels, not from "
            "human labels",
            recipe="config/train_indoor.yaml",
            command="refinenet-ros label (docs/training.md, indoor); refinenet-ros train --config "
            "config/train_indoor.yaml --out runs/indoor; then 4,000 more steps from runs/indoor/best.pt "
            "(--weights runs/indoor/best.pt --steps 4000 --lr 0.0001 --warmup-steps 50 --seed 1)",
            dataset="Places365-Standard indoor photographs, 3,600 of places/train (bathroom, bedroom, "
            "dining room, entrance hall, kitchen, living room); Zhou et al., TPAMI 2017; non-commercial "
            "research and education use; labelled by the teacher, pixels it was unsure of (< 0.5) ignored",
            backbone="ImageNet MobileNetV2 1.0/224 from TensorFlow's quantised TFLite model "
            "(google-coral/test_data, Apache-2.0), dequantised",
            metrics=_INDOOR_METRICS,
            teacher="TensorFlow DeepLabV3-MobileNetV2 trained on ADE20K (150 classes, Apache-2.0), "
            "513x513, its probabilities summed into the indoor classes (label_maps/ade20k_to_indoor.yaml)",
            sha256="0498ef1422b7838fd37e7eb00d6a4081eb2466a3fc852a93c705944d91e6de49",
        ),
    )
}


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A bundled file's sha256, computed once per file version."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


DEFAULT_WEIGHTS = "camvid"
"""What every inference entry point runs when no weights are given."""


def get_weights(name: str) -> Weights:
    """Look a bundled weights entry up by name; the error lists the names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsError(
            f"no bundled weights named {name!r}; bundled: {', '.join(WEIGHTS)} (or give a checkpoint path)"
        ) from None


def weights_for(model: str | None, labels: str | None) -> Weights | None:
    """The bundled weights that fit the asked model/labels (None = any), the default first;
    None when no bundled weights fit (``--labels indoor`` finds ``indoor``, ``voc`` nothing)."""
    ordered = [WEIGHTS[DEFAULT_WEIGHTS], *(w for n, w in WEIGHTS.items() if n != DEFAULT_WEIGHTS)]
    for w in ordered:
        if (model is None or model == w.model) and (labels is None or labels == w.labels):
            return w
    return None
