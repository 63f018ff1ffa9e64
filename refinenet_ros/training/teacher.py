"""Teachers: models whose class probabilities label images for a student to learn from.

Three kinds, chosen by what ``--teacher`` names:

- a ``.tflite`` file (e.g. TensorFlow's DeepLab models; needs ``ai-edge-litert``, the
  ``teacher`` extra),
- a ``.onnx`` file taking an image batch and returning per-class logits (or probabilities),
- any of this package's own weights (a bundled name or a checkpoint), which may average
  several scales and mirror images, as the RefineNet paper's test-time protocol does.

Every teacher answers one question, :meth:`Teacher.probabilities`: for an HxWx3 RGB image,
the probability of each of its classes at every pixel, at the image's own size. Probabilities
(not labels) are what make the rest work: summed over a mapping's members they become a
target set's probabilities, averaged over flips and scales they become steadier, and their
maximum is the confidence a threshold masks on.

File teachers need an input convention the file does not always state; it is detected
where it can be (size, layout and element type from the file) and otherwise given by the
user (:class:`InputConvention`): how pixel values are scaled, and how an image is fitted to
a fixed input size (``pad``: resize the long side to fit, keep aspect, pad the rest, as
TensorFlow's DeepLab does; ``stretch``: resize to the input size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SCALINGS",
    "InputConvention",
    "Teacher",
    "TeacherError",
    "open_teacher",
]

Scaling = Literal["minus1to1", "zero1", "imagenet", "raw"]
SCALINGS: tuple[str, ...] = ("minus1to1", "zero1", "imagenet", "raw")
"""How pixel values reach a file teacher: ``x/127.5-1`` (TensorFlow), ``x/255``,
ImageNet mean/std after ``x/255`` (PyTorch), or the 0-255 values as they are."""
FITS: tuple[str, ...] = ("pad", "stretch")

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class TeacherError(RefineNetRosError, ValueError):
    """A teacher that cannot be used (missing file, wrong kind, unusable input or output)."""


@dataclass(frozen=True)
class InputConvention:
    """How an image becomes a file teacher's input; ``None`` fields are detected."""

    scaling: Scaling | None = None
    fit: Literal["pad", "stretch"] = "pad"
    output: Literal["logits", "probabilities"] = "logits"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Teacher:
    """A model that gives class probabilities for an RGB image (see the module docstring)."""

    #: Output classes (including a leading "other" output where the model has one).
    num_classes: int
    #: What the teacher is, for the labels' record (kind, file, sha256, options).
    description: dict[str, object]

    def probabilities(
        self,
        rgb: npt.NDArray[np.uint8],
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        matrix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[C, H, W]`` float32 class probabilities at the image's size, averaged over the
        mirror image (``flip``) and ``scales``; with ``matrix`` (``[C, T]`` membership, see
        :meth:`LabelMapping.matrix`) the ``T`` target classes' probabilities instead."""
        raise NotImplementedError


class _ArrayTeacher(Teacher):
    """A file teacher: one forward function over an NHWC or NCHW float (or uint8) batch."""

    def __init__(
        self,
        forward: Callable[[npt.NDArray[np.generic]], npt.NDArray[np.floating]],
        *,
        input_shape: Sequence[int | None],
        input_dtype: np.dtype[np.generic],
        convention: InputConvention,
        description: dict[str, object],
        what: str,
    ) -> None:
        if len(input_shape) != 4 or (input_shape[1] != 3 and input_shape[3] != 3):
            raise TeacherError(
                f"{what}: expected one image input shaped NHWC or NCHW with 3 channels, "
                f"got {list(input_shape)}"
            )
        self._forward = forward
        self._nchw = input_shape[1] == 3 and input_shape[3] != 3
        size = (input_shape[2], input_shape[3]) if self._nchw else (input_shape[1], input_shape[2])
        sh, sw = size
        self._size = (sh, sw) if isinstance(sh, int) and isinstance(sw, int) and sh > 0 and sw > 0 else None
        self._dtype = input_dtype
        integer_input = np.issubdtype(input_dtype, np.integer)
        self._scaling: Scaling = convention.scaling or ("raw" if integer_input else "minus1to1")
        self._fit = convention.fit
        self._output = convention.output
        self._what = what
        self.num_classes = 0  # known after the first forward
        self.description = {
            **description,
            "input": list(input_shape),
            "layout": "NCHW" if self._nchw else "NHWC",
            "scaling": self._scaling,
            "fit": self._fit,
            "output": self._output,
        }

    def _normalise(self, rgb: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        if self._scaling == "raw":
            return rgb.astype(self._dtype)
        x = rgb.astype(np.float32)
        if self._scaling == "minus1to1":
            x = x / 127.5 - 1.0
        elif self._scaling == "zero1":
            x = x / 255.0
        else:
            x = (x / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return x.astype(self._dtype, copy=False)

    def _run_once(
        self, rgb: npt.NDArray[np.uint8], scale: float, matrix: torch.Tensor | None
    ) -> torch.Tensor:
        """Probabilities ``[C, h, w]`` for ``rgb`` at its size (projected by ``matrix``)."""
        import cv2
        import torch
        import torch.nn.functional as F

        h, w = rgb.shape[:2]
        if self._size is None:  # dynamic input: the image itself, at the asked scale
            sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
            img = rgb if (sh, sw) == (h, w) else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
            canvas = self._normalise(img)
            valid = (sh, sw)
        else:
            th, tw = self._size
            if self._fit == "stretch":
                canvas = self._normalise(cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR))
                valid = (th, tw)
            else:
                k = min(th / h, tw / w)
                sh, sw = max(1, min(th, round(h * k))), max(1, min(tw, round(w * k)))
                img = rgb if (sh, sw) == (h, w) else cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
                canvas = np.zeros((th, tw, 3), dtype=self._dtype)
                if self._scaling == "raw":
                    canvas[:] = 128  # mid-grey, what TensorFlow's models pad with
                canvas[:sh, :sw] = self._normalise(img)
                valid = (sh, sw)
        batch = canvas[None]
        if self._nchw:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        out = np.asarray(self._forward(batch))
        if out.ndim != 4 or out.shape[0] != 1:
            raise TeacherError(f"{self._what}: expected a 1xCxHxW or 1xHxWxC output, got {list(out.shape)}")
        scores = torch.from_numpy(np.asarray(out[0], dtype=np.float32))
        if self._nchw:
            scores = scores.permute(1, 2, 0)  # class scores last: softmax and projection run contiguous
        in_h, in_w = canvas.shape[:2]
        # The output may be smaller than the input (output stride): scale the valid region.
        oh, ow = int(scores.shape[0]), int(scores.shape[1])
        vh, vw = max(1, round(valid[0] * oh / in_h)), max(1, round(valid[1] * ow / in_w))
        scores = scores[:vh, :vw]
        probs = scores if self._output == "probabilities" else torch.softmax(scores, dim=-1)
        self.num_classes = int(probs.shape[-1])
        if matrix is not None:
            probs = probs @ matrix  # the target set's probabilities before resizing: fewer maps
        chw = probs.permute(2, 0, 1)
        if (vh, vw) != (h, w):
            chw = F.interpolate(chw[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return chw.contiguous()

    def probabilities(
        self,
        rgb: npt.NDArray[np.uint8],
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        matrix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._size is not None and tuple(scales) != (1.0,):
            h, w = self._size
            raise TeacherError(
                f"{self._what} takes a fixed {h}x{w} input: --scales needs a teacher with a "
                "dynamic input size (ONNX) or this package's own weights; use --flip alone"
            )
        total = None
        n = 0
        for s in scales:
            views = [False, True] if flip else [False]
            for mirrored in views:
                img = np.ascontiguousarray(rgb[:, ::-1]) if mirrored else rgb
                p = self._run_once(img, float(s), matrix)
                if mirrored:
                    p = p.flip(-1)
                total = p if total is None else total + p
                n += 1
        assert total is not None
        return total / n


def _tflite_teacher(path: Path, convention: InputConvention, threads: int) -> Teacher:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise TeacherError(
            "a .tflite teacher needs the LiteRT interpreter: pip install 'refinenet_ros[teacher]' "
            "(ai-edge-litert)"
        ) from None
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=max(1, threads))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TeacherError(
            f"{path}: not a usable TFLite model ({' '.join(str(exc).split())[:200]})"
        ) from None
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) < 1:
        raise TeacherError(
            f"{path}: expected one image input and a class-score output, got {len(inputs)} inputs"
        )
    in_index, out_index = inputs[0]["index"], outputs[0]["index"]
    scale, zero = outputs[0].get("quantization", (0.0, 0))

    def forward(batch: npt.NDArray[np.generic]) -> npt.NDArray[np.floating]:
        interpreter.set_tensor(in_index, batch)
        interpreter.invoke()
        out = interpreter.get_tensor(out_index)
        if scale:  # a quantised output: back to real scores
            return (out.astype(np.float32) - zero) * scale
        return out

    return _ArrayTeacher(
        forward,
        input_shape=[int(d) for d in inputs[0]["shape"]],
        input_dtype=np.dtype(inputs[0]["dtype"]),
        convention=convention,
        description={"kind": "tflite", "file": path.name, "sha256": sha256_of(path)},
        what=str(path),
    )


def _onnx_teacher(path: Path, convention: InputConvention, threads: int) -> Teacher:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise TeacherError(f"{path}: not a usable ONNX model ({' '.join(str(exc).split())[:200]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise TeacherError(
            f"{path}: expected one image input, got {len(inputs)} ({', '.join(i.name for i in inputs)})"
        )
    dtypes = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}
    if inputs[0].type not in dtypes:
        raise TeacherError(f"{path}: input type {inputs[0].type} is not float32, float16 or uint8")
    shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    name, out_name = inputs[0].name, session.get_outputs()[0].name

    def forward(batch: npt.NDArray[np.generic]) -> npt.NDArray[np.floating]:
        return np.asarray(session.run([out_name], {name: batch})[0])

    return _ArrayTeacher(
        forward,
        input_shape=shape,
        input_dtype=np.dtype(dtypes[inputs[0].type]),
        convention=convention,
        description={"kind": "onnx", "file": path.name, "sha256": sha256_of(path)},
        what=str(path),
    )


class _WeightsTeacher(Teacher):
    """This package's own weights in PyTorch: scales and flips as in :mod:`models.multiscale`."""

    def __init__(self, spec: str, threads: int) -> None:
        import torch

        from refinenet_ros.config import ModelConfig, load_model

        self._threads = max(1, threads)
        config = ModelConfig(weights=spec).resolved()
        if config.weights is None:
            raise TeacherError(f"teacher {spec!r}: random weights teach nothing; give trained weights")
        assert config.mean is not None and config.std is not None
        self._model = load_model(config)
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._size = config.network_size
        self.num_classes = config.label_set.num_classes
        self.labels = config.label_set.name
        self.description = {"kind": "weights", "weights": config.weights_name or spec, "labels": self.labels}

    def probabilities(
        self,
        rgb: npt.NDArray[np.uint8],
        *,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        matrix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        import cv2
        import torch
        import torch.nn.functional as F

        from refinenet_ros.models.multiscale import predict_probs

        h, w = rgb.shape[:2]
        img: npt.NDArray[np.generic] = rgb
        if self._size is not None and (h, w) != self._size:  # the network size it was trained at
            img = cv2.resize(rgb, (self._size[1], self._size[0]), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        x = (x - self._mean) / self._std
        previous = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            probs = predict_probs(self._model, x, scales=scales, flip=flip)[0]
        finally:
            torch.set_num_threads(previous)
        if matrix is not None:
            probs = torch.einsum("chw,ct->thw", probs, matrix)
        if tuple(probs.shape[1:]) != (h, w):
            probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return probs


def open_teacher(spec: str, convention: InputConvention | None = None, *, threads: int = 2) -> Teacher:
    """The teacher ``spec`` names: a ``.tflite`` or ``.onnx`` file, or our weights (name or checkpoint)."""
    convention = convention or InputConvention()
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".tflite", ".onnx"):
        if not path.is_file():
            raise TeacherError(f"teacher {spec}: no such file")
        if path.stat().st_size == 0:
            raise TeacherError(f"teacher {spec}: the file is empty")
        if suffix == ".tflite":
            return _tflite_teacher(path, convention, threads)
        return _onnx_teacher(path, convention, threads)
    return _WeightsTeacher(spec, threads)
