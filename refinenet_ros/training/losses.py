"""What training minimises: cross-entropy over fine classes and unions of them, with ENet's
class weights.

Coarse or partial labels (a pixel known to be "vehicle", not which vehicle) train a fine
model through the summed probability of the classes in the union: :func:`union_targets`
gives every data set's coarse classes their own target ids and the rows saying which model
classes each holds; :func:`union_loss` is ``-log sum_{c in u} p_c`` over them, which is
plain cross-entropy for fine labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from refinenet_ros.labels import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

    from refinenet_ros.training.datasets import SegmentationDataset

__all__ = ["enet_class_weights", "union_loss", "union_targets"]


def enet_class_weights(dataset: SegmentationDataset, num_classes: int, c: float = 1.02) -> np.ndarray:
    """ENet's class weights ``1 / ln(c + p_k)`` from the training labels' class frequencies p_k.

    Thin, rare classes (poles, signs, pedestrians) get up to ~10x the weight of road and
    sky, which is what lifts their IoU on street scenes; normalised to mean 1 so the
    learning rate means the same with and without weighting.
    """
    counts = np.zeros(num_classes, np.int64)
    for i in range(len(dataset)):
        _, label = dataset[i]
        valid = label[label < num_classes]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    p = counts / max(1, counts.sum())
    w = 1.0 / np.log(c + p)
    return (w / w.mean()).astype(np.float32)


def union_targets(datasets: list[SegmentationDataset], num_classes: int) -> np.ndarray | None:
    """One target space for fine and coarse labels: ``[U, C]`` 0/1 rows, one per target id.

    Ids ``0..C-1`` are the model's classes (identity rows); each data set with a union
    mapping (``dataset.unions``) gets its source classes appended as further ids, and its
    label lookup is rewritten to send its files' class ids there. None when no set is
    coarse (plain cross-entropy). The loss of a pixel with target ``u`` is then
    ``-log sum_c M[u, c] p_c`` (:func:`union_loss`).
    """
    from refinenet_ros.training.datasets import DatasetError

    rows = [np.eye(num_classes, dtype=np.float32)]
    offset = num_classes
    for ds in datasets:
        mapping = ds.unions
        if mapping is None:
            continue
        if mapping.target.num_classes != num_classes:
            raise DatasetError(
                f"{ds.description}: the mapping {mapping.name} is onto {mapping.target.name} "
                f"({mapping.target.num_classes} classes), the model has {num_classes}"
            )
        count = len(mapping.source)
        if offset + count >= IGNORE_INDEX:
            raise DatasetError(f"{ds.description}: too many coarse classes ({offset + count}, limit 254)")
        send = np.full(65536, IGNORE_INDEX, dtype=np.uint16)
        send[:count] = np.arange(offset, offset + count, dtype=np.uint16)
        send[IGNORE_INDEX] = IGNORE_INDEX
        base = ds.lut if ds.lut is not None else np.arange(65536, dtype=np.uint16)
        ds.lut = send[base]
        rows.append(mapping.matrix())
        offset += count
    return np.concatenate(rows) if len(rows) > 1 else None


def union_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    unions: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy where a target may be a union of classes: ``-log sum_{c in u} p_c``.

    ``logits`` [N, C, H, W]; ``target`` [N, H, W] ids into the rows of ``unions`` ([U, C],
    first C rows the identity, see :func:`union_targets`); None or fine-only targets give
    ``F.cross_entropy`` exactly. ``weight`` ([C]) weighs fine pixels as cross-entropy does;
    a union pixel weighs the mean of its members' weights. Mean over labelled pixels.
    """
    import torch
    import torch.nn.functional as F

    num_classes = logits.shape[1]
    if unions is None or unions.shape[0] == num_classes:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    log_p = F.log_softmax(logits, dim=1)
    extra = unions[num_classes:]
    # log sum_{c in u} p_c, with log 0 = -inf outside the union: [N, K, H, W]
    mask = torch.where(extra > 0, 0.0, float("-inf")).to(log_p.dtype)
    coarse = torch.logsumexp(log_p.unsqueeze(1) + mask[None, :, :, None, None], dim=2)
    full = torch.cat([log_p, coarse], dim=1)
    full_weight = None
    if weight is not None:
        union_weight = (extra * weight[None]).sum(1) / extra.sum(1).clamp(min=1)
        full_weight = torch.cat([weight, union_weight])
    return F.nll_loss(full, target, weight=full_weight, ignore_index=ignore_index)
