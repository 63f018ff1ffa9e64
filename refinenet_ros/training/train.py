"""Fine-tune a RefineNet model on a labelled data set: the papers' recipe (random scale, crop
and mirror, SGD + poly decay, x10 decoder learning rate for Light-Weight RefineNet) and
checkpoints that every entry point loads; the recipe in full is in
:mod:`refinenet_ros.cli.train`, the ``refinenet-ros train`` command line."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.training.losses import enet_class_weights, union_loss

if TYPE_CHECKING:
    import torch
    from torch import nn

    from refinenet_ros.labels import LabelSet
    from refinenet_ros.training.datasets import SegmentationDataset, TrainAugment

log = logging.getLogger("refinenet_ros")

Triple = tuple[float, float, float]


class TrainError(RefineNetRosError, ValueError):
    """The run cannot go on with the inputs given (e.g. a --resume file that train did not write)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``decoder_lr_mult`` None = 10 for LW models, 1 otherwise."""

    steps: int = 1000
    batch_size: int = 8
    crop_size: tuple[int, int] = (320, 320)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    lr: float = 5e-4
    decoder_lr_mult: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-5
    poly_power: float = 0.9
    warmup_steps: int = 0
    freeze_bn: bool = False
    val_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    optimizer: str = "sgd"
    jitter: float = 0.0
    class_weighting: str = "none"
    amp: str = "off"
    mean: Triple = (0.485, 0.456, 0.406)
    std: Triple = (0.229, 0.224, 0.225)


@dataclass
class TrainResult:
    """Validation mIoU per step (``history``), the best one, and where checkpoints went."""

    steps: int
    #: the step this call started from (0, or the resumed checkpoint's)
    start_step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    best_miou: float = float("nan")
    best_step: int = 0
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def decoder_lr_mult_for(model_name: str) -> float:
    """x10 for the Light-Weight decoder (trained from scratch), x1 for full RefineNet."""
    return 10.0 if model_name.startswith("lw_") else 1.0


OPTIMIZERS = ("sgd", "adamw")
LOG_EVERY = 50
CLASS_WEIGHTINGS = ("none", "enet")
AMP_MODES = ("auto", "bf16", "off")


def resolve_amp(mode: str, device: str) -> str:
    """``auto`` -> ``bf16`` where bf16 matmuls are native (CUDA with bf16, AMX / AVX-512 BF16
    CPUs), else ``off``: emulated bf16 is slower than fp32 and no more accurate."""
    if mode != "auto":
        return mode
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "off"
    from refinenet_ros.machine import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "off"


def poly_lr(base: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """Poly decay to 0 at ``total``, after a linear warm-up over the first ``warmup`` steps.

    The warm-up matters for decoders trained from scratch without normalisation (the
    Light-Weight RefineNet's): Adam's first steps move every weight by about the full
    learning rate, which can blow the loss up and kill ReLU6 units for good.
    """
    lr = base * (1.0 - min(step, total) / max(1, total)) ** power
    return lr * (step + 1) / warmup if step < warmup else lr


def param_groups(model: nn.Module, lr: float, decoder_mult: float, freeze_bn: bool) -> list[dict[str, Any]]:
    """Encoder (``model.backbone_prefixes``) and decoder parameter groups; frozen BN excluded."""
    from torch import nn

    prefixes = tuple(getattr(model, "backbone_prefixes", ("conv1.", "bn1.", "layer")))
    bn_params: set[int] = set()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                bn_params.update(id(p) for p in m.parameters())
    encoder: list[nn.Parameter] = []
    decoder: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if id(p) in bn_params:
            p.requires_grad_(False)
            continue
        (encoder if name.startswith(prefixes) else decoder).append(p)
    return [
        {"params": encoder, "lr": lr, "base_lr": lr, "name": "encoder"},
        {"params": decoder, "lr": lr * decoder_mult, "base_lr": lr * decoder_mult, "name": "decoder"},
    ]


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``train()``, with BatchNorm layers kept in eval mode (running stats fixed) if frozen."""
    from torch import nn

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Batches:
    """Deterministic infinite stream of augmented batches: sample k of the run is item
    ``perm_epoch[k % n]`` augmented with an RNG seeded by (seed, k), so a resumed run
    sees exactly the batches the uninterrupted run would have seen."""

    #: decoded samples kept in memory up to this many (CamVid train: 367 x 0.7 MB)
    CACHE_LIMIT = 2000

    def __init__(
        self, dataset: SegmentationDataset, augment: TrainAugment, batch_size: int, seed: int
    ) -> None:
        self.dataset = dataset
        self.augment = augment
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode each image once: PNG decoding would otherwise cost as much as a small step."""
        hit = self._cache.get(index)
        if hit is None:
            hit = self.dataset[index]
            if len(self.dataset) <= self.CACHE_LIMIT:
                self._cache[index] = hit
        return hit

    def item(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.dataset)
        epoch, pos = divmod(k, n)
        perm = self._perms.get(epoch)
        if perm is None:  # keep only the current epoch's order
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perms = {epoch: perm}
        image, label = self._sample(int(perm[pos]))
        return self.augment(image, label, random.Random(self.seed * 1_000_003 + k))

    def batches(self, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        step = start_step
        while True:
            items = [self.item(step * self.batch_size + j) for j in range(self.batch_size)]
            yield np.stack([i for i, _ in items]), np.stack([lab for _, lab in items])
            step += 1


def _check_labels(labels: np.ndarray, label_set: LabelSet, coarse: int = 0) -> None:
    """Ground truth beyond the label set (and ``coarse`` union ids after it) fails here, by
    value, not inside torch's loss."""
    bad = labels[(labels >= label_set.num_classes + coarse) & (labels != label_set.ignore_index)]
    if bad.size:
        from refinenet_ros.training.datasets import DatasetError

        values = sorted({int(v) for v in np.unique(bad)[:8]})
        raise DatasetError(
            f"ground truth holds class ids {values} outside 0..{label_set.num_classes - 1} of the "
            f"{label_set.name!r} label set (ignore {label_set.ignore_index}); check --labels, "
            "--dataset and --label-offset"
        )


def train(
    model: nn.Module,
    model_name: str,
    label_set: LabelSet,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    unions: np.ndarray | None = None,
) -> TrainResult:
    """Run the training loop; returns the validation history. ``out_dir`` None = no checkpoints.

    ``unions`` (from :func:`~refinenet_ros.training.losses.union_targets`) lets targets name
    unions of classes (coarse labels); a validation set with ``unions`` is scored on its own
    classes through them.
    """
    import torch
    import torch.nn.functional as F

    from refinenet_ros.backends.pipeline import Normalise
    from refinenet_ros.malloc_tuning import keep_freed_memory
    from refinenet_ros.training.datasets import TrainAugment
    from refinenet_ros.training.evaluate import evaluate, torch_predictor

    keep_freed_memory()  # activations are freed and re-allocated every step: no page faults
    device = config.device
    # channels_last: 2.2-2.7x faster fwd+bwd of LW-MobileNetV2 on CPU (measured, 2 cores).
    model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    mult = config.decoder_lr_mult if config.decoder_lr_mult is not None else decoder_lr_mult_for(model_name)
    groups = param_groups(model, config.lr, mult, config.freeze_bn)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    class_weights = None
    if config.class_weighting == "enet":
        w = enet_class_weights(train_set, label_set.num_classes)
        named = ", ".join(f"{n} {v:.2f}" for n, v in zip(label_set.classes, w, strict=True))
        log.info("class weights (enet): %s", named)
        class_weights = torch.from_numpy(w).to(device)
    union_rows = torch.from_numpy(unions).to(device) if unions is not None else None
    coarse = 0 if unions is None else unions.shape[0] - label_set.num_classes
    autocast_device = "cuda" if device.startswith("cuda") else "cpu"
    result = TrainResult(steps=config.steps)
    start = 0
    if resume is not None:
        start = result.start_step = _resume(Path(resume), model, optimizer, result)
        if start >= config.steps:
            raise TrainError(
                f"--resume {resume} is already at step {start}; --steps is the total to reach, "
                f"give more than {start} to train further"
            )
        log.info("resumed from %s at step %d", resume, start)
    out = Path(out_dir) if out_dir is not None else None
    normalise = Normalise(config.mean, config.std).to(device)
    augment = TrainAugment(config.crop_size, config.scale_range, config.flip, label_set.ignore_index,
                           jitter=config.jitter)  # fmt: skip
    stream = _Batches(train_set, augment, config.batch_size, config.seed).batches(start)

    def validate(step: int) -> None:
        if val_set is None:
            return
        predict = torch_predictor(model, device=device, mean=config.mean, std=config.std)
        miou = evaluate(predict, val_set, label_set, score_through=val_set.unions).metrics.miou
        result.history.append((step, miou))
        improved = not math.isnan(miou) and (math.isnan(result.best_miou) or miou > result.best_miou)
        if improved:
            result.best_miou, result.best_step = miou, step
            if out is not None:
                result.best_checkpoint = _save(
                    out / "best.pt", model, model_name, label_set, config, step, result
                )
        log.info("step %d: validation mIoU %.2f %% (best %.2f %% at step %d)", step, 100 * miou,
                 100 * result.best_miou, result.best_step)  # fmt: skip

    if start == 0 and val_set is not None and not result.history:
        validate(0)
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=start, unit="step", desc="training", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        for g in optimizer.param_groups:
            g["lr"] = poly_lr(g["base_lr"], step, config.steps, config.poly_power, config.warmup_steps)
        images, labels = next(stream)
        _check_labels(labels, label_set, coarse)
        set_train_mode(model, config.freeze_bn)
        x = normalise(torch.from_numpy(images).to(device)).contiguous(memory_format=torch.channels_last)
        target = torch.from_numpy(labels).to(device)
        with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=config.amp == "bf16"):
            logits = model(x)
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = union_loss(
            logits, target, union_rows, weight=class_weights, ignore_index=label_set.ignore_index
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step + 1}; lower --lr")
        result.losses.append(value)
        bar.update(1)
        done = step + 1
        if progress:
            last = f"{100 * result.history[-1][1]:.1f}" if result.history else "-"
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", mIoU=last,
                            refresh=False)  # fmt: skip
        if done % LOG_EVERY == 0:
            recent = result.losses[-LOG_EVERY:]
            log.info("step %d/%d: loss %.4f (mean of last %d), lr %.2e, %.2f s/step", done, config.steps,
                     sum(recent) / len(recent), len(recent), optimizer.param_groups[0]["lr"],
                     (time.perf_counter() - t0) / (done - start))  # fmt: skip
        if done == config.steps or (config.val_every > 0 and done % config.val_every == 0):
            validate(done)
        if out is not None and (done % max(1, config.checkpoint_every) == 0 or done == config.steps):
            from refinenet_ros.io import signals_deferred

            with signals_deferred():  # weights and momentum of one step, or neither
                result.last_checkpoint = _save(
                    out / "last.pt", model, model_name, label_set, config, done, result
                )
                _save_optimizer(out / "last.optim.pt", optimizer, done)
    bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result


def _save(
    path: Path, model: nn.Module, model_name: str, label_set: LabelSet, config: TrainConfig, step: int,
    result: TrainResult,
) -> Path:  # fmt: skip
    from refinenet_ros.models import save_checkpoint

    history = [[s, None if math.isnan(m) else m] for s, m in result.history]
    best = None if math.isnan(result.best_miou) else result.best_miou
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    save_checkpoint(
        path, model, model_name=model_name, label_set=label_set.name, num_classes=label_set.num_classes,
        mean=config.mean, std=config.std, network_size=None,
        extra={"step": step, "train_config": cfg, "val_history": history, "best_miou": best,
               "best_step": result.best_step},
    )  # fmt: skip
    return path


def _save_optimizer(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Momentum buffers live beside the weights (tensors are not checkpoint metadata)."""
    import torch

    from refinenet_ros.io import atomic_write, signals_deferred

    with signals_deferred(), atomic_write(path) as f:
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, f)


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, result: TrainResult) -> int:
    """Weights, step and history from ``path``, momentum from the ``.optim.pt`` beside it;
    anything that train did not write is refused in one line (:class:`TrainError`)."""
    from refinenet_ros.models import CheckpointError, load_checkpoint, read_checkpoint_metadata

    not_ours = f"--resume {path}: not a checkpoint written by refinenet-ros train"
    try:
        meta = read_checkpoint_metadata(path)
    except CheckpointError as exc:
        raise TrainError(f"{not_ours} ({exc})") from None
    extra = (meta or {}).get("extra")
    if not isinstance(extra, dict) or "step" not in extra:
        raise TrainError(f"{not_ours} (no step recorded)")
    try:
        step = int(extra["step"])
        if step < 0 or step != extra["step"]:
            raise ValueError(step)
        history = [
            (int(s), float("nan") if m is None else float(m)) for s, m in extra.get("val_history") or []
        ]
        best = extra.get("best_miou")
        best_pair = (float(best), int(extra.get("best_step", 0))) if best is not None else None
    except (TypeError, ValueError):
        raise TrainError(f"{not_ours} (its step or validation history is not numbers)") from None
    try:
        load_checkpoint(model, path)
    except CheckpointError as exc:
        raise TrainError(f"--resume: {exc}") from None
    result.history = history
    if best_pair is not None:
        result.best_miou, result.best_step = best_pair
    optim_path = path.with_name(path.name.replace(".pt", "") + ".optim.pt")
    if optim_path.is_file():
        _resume_optimizer(optim_path, optimizer, step)
    else:
        log.warning("no %s beside %s: optimiser momentum restarts from zero", optim_path.name, path.name)
    return step


def _resume_optimizer(optim_path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Momentum buffers of ``step`` from ``optim_path``; another step's restart from zero with a
    warning, a file that is not this run's optimiser state is refused naming the way out."""
    import copy

    from refinenet_ros.models import CheckpointError
    from refinenet_ros.models.checkpoint_file import torch_load_safely

    fix = f"delete {optim_path} to resume with the optimiser momentum restarting from zero"
    try:
        state = torch_load_safely(optim_path, "cpu")
    except CheckpointError:
        raise TrainError(f"{optim_path}: not optimiser state written by refinenet-ros train; {fix}") from None
    saved = state.get("optimizer") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise TrainError(f"{optim_path}: holds no optimiser state; {fix}")
    try:
        saved_step = int(state.get("step", -1))
    except (TypeError, ValueError):
        raise TrainError(f"{optim_path}: its step is not a number; {fix}") from None
    if saved_step != step:
        log.warning("%s is from step %s, not %d: momentum restarts", optim_path, state.get("step"), step)
        return
    before = copy.deepcopy(optimizer.state_dict())
    try:
        optimizer.load_state_dict(saved)
        for g in optimizer.param_groups:  # base_lr comes from this run's settings
            g.setdefault("base_lr", g["lr"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        optimizer.load_state_dict(before)
        raise TrainError(
            f"{optim_path}: optimiser state of another optimiser or model ({type(exc).__name__}); "
            f"resume with the --optimizer of that run, or {fix}"
        ) from None
