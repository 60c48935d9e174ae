"""A new classification head on a frozen backbone: penultimate features → logistic regression.

Used by ``adapt --train-layers head`` and by ``tools/build_default_v2.py``. The backbone runs once per
film (and once per augmented view), in inference mode through the same scorer ``scan`` uses; the head
is scikit-learn's L2 logistic regression on standardised features with per-group balanced sample
weights, its strength chosen on held-out films; the standardisation is then folded into the
network's ``fc`` so that scoring is the unchanged ResNet50.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from cxrscreen.model.inference import Runtime, inference_net, to_device
from cxrscreen.training.metrics import auroc

C_GRID: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Head:
    """A linear head on raw penultimate features: ``logit = features · weight + bias``."""

    weight: np.ndarray  # (2048,)
    bias: float
    C: float
    held_out_auroc: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.weight + self.bias

    @classmethod
    def of(cls, net: torch.nn.Module) -> Head:
        """The head a network has now (``net.fc``)."""
        return cls(net.fc.weight.detach().double().numpy().ravel(), float(net.fc.bias.detach()[0]), 0.0, float("nan"))

    def install(self, net: torch.nn.Module) -> torch.nn.Module:
        """Write the head into ``net.fc`` (in place) and return ``net``."""
        with torch.no_grad():
            net.fc.weight.copy_(torch.as_tensor(self.weight, dtype=net.fc.weight.dtype).reshape(1, -1))
            net.fc.bias.fill_(self.bias)
        return net


def feature_net(net: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The scoring copy of ``net`` (as ``scan`` runs it) with ``fc`` replaced by the identity."""
    scorer = inference_net(net, rt)
    scorer.fc = torch.nn.Identity()
    return scorer


@torch.inference_mode()
def extract(scorer: torch.nn.Module, batches: Iterable[torch.Tensor], rt: Runtime) -> np.ndarray:
    """Penultimate features (float32, one row per image) of normalised model inputs."""
    out = []
    for x in batches:
        with rt.autocast():
            out.append(scorer(to_device(x, rt)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048), dtype=np.float32)


def balanced_weights(groups: np.ndarray, labels: np.ndarray, emphasis: dict[str, float] | None = None) -> np.ndarray:
    """Sample weights giving every group × class the same total (times ``emphasis[group]``), mean 1."""
    w = np.zeros(len(labels), dtype=np.float64)
    for g in np.unique(groups):
        for c in np.unique(labels):
            m = (groups == g) & (labels == c)
            w[m] = (emphasis or {}).get(str(g), 1.0) / m.sum()
    return w * len(w) / w.sum()


def fit_head(train_x: np.ndarray, train_y: np.ndarray, weights: np.ndarray,
             held_x: Sequence[np.ndarray], held_y: Sequence[np.ndarray], grid: Sequence[float] = C_GRID,
             prior: Head | None = None) -> Head:
    """L2 logistic regression on standardised features; C chosen by the weakest held-out AUROC.

    ``held_x``/``held_y``: one or more held-out groups (e.g. one per dataset); the C whose lowest
    AUROC over the groups is highest wins, so no group is sacrificed for another. With ``prior`` (the
    starting model's head) its logit is one more input: keeping what the old head knew costs one
    coefficient, not 2048 shrunk ones. Everything folds back into one linear head.
    """
    x = train_x.astype(np.float64)
    if prior is not None:
        x = np.column_stack([x, prior.logits(train_x)])
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mu) / sd
    best: Head | None = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=5000).fit(z, train_y, sample_weight=weights)
        coef = clf.coef_.ravel() / sd
        bias = float(clf.intercept_[0] - np.sum(coef * mu))
        if prior is not None:  # a·(prior.weight·f + prior.bias) folded into the feature weights
            coef, bias = coef[:-1] + coef[-1] * prior.weight, bias + coef[-1] * prior.bias
        head = Head(coef, bias, float(c), 0.0)
        score = float(np.nanmin([auroc(y, head.logits(f)) for f, y in zip(held_x, held_y, strict=True)]))
        if best is None or score > best.held_out_auroc:
            best = Head(head.weight, head.bias, head.C, float(score))
    assert best is not None
    return best
