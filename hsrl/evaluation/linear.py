r"""Linear classification of frozen features (the paper's linear-probe protocol).

A single linear layer :math:`\hat y = \arg\max_c (W z + b)_c` is trained with cross-entropy on the
training features and scored on the test features. The paper (and its code's ``linear_eval.py``) trains
it with Adam, lr :math:`10^{-3}`, betas (0.5, 0.999), batch 128, for 100 epochs, multiplying the lr by
0.2 at epochs 60 and 80: :meth:`LinearProbeConfig.paper`. :meth:`LinearProbeConfig.fast` keeps the
optimiser and the schedule's shape with a 10× larger lr, for 20 epochs at batch 256 but at least 500 steps
(so that a few hundred images still train to convergence), on standardised features: for small runs and CI.

One deviation, for speed: the features are computed once, from the centre crop, rather than from a fresh
random crop of each image every epoch as the paper's code does; this usually costs a little accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LinearProbeConfig", "LinearProbeResult", "linear_probe"]


@dataclass(frozen=True)
class LinearProbeConfig:
    """Training settings of the linear classifier.

    Attributes:
        epochs: passes over the training features.
        lr: Adam's learning rate.
        betas: Adam's betas.
        batch_size: features per step.
        milestones: fractions of ``epochs`` at which the lr is multiplied by ``gamma``.
        gamma: the lr factor at each milestone.
        weight_decay: L2 penalty (Adam's, coupled).
        standardize: centre and scale each feature by its training mean/std first (off in the paper;
            helps raw pixels and unnormalised layers converge in few epochs).
        min_steps: raise ``epochs`` until training takes at least this many steps (0: off).
        seed: seeds the classifier's init and the batch order.
    """

    epochs: int = 100
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.2
    weight_decay: float = 0.0
    standardize: bool = False
    min_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("linear probe: epochs and batch_size must be >= 1 and lr > 0")

    @classmethod
    def paper(cls, **overrides: object) -> LinearProbeConfig:
        """The paper's protocol: Adam 1e-3, betas (0.5, 0.999), batch 128, 100 epochs, ×0.2 at 60 and 80."""
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def fast(cls, **overrides: object) -> LinearProbeConfig:
        """Adam 1e-2, 20 epochs (at least 500 steps) at batch 256, ×0.2 at 60% and 80%, standardised."""
        preset = {"epochs": 20, "lr": 1e-2, "batch_size": 256, "standardize": True, "min_steps": 500}
        return cls(**{**preset, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class LinearProbeResult:
    """``train_accuracy`` and ``test_accuracy`` in [0, 1], the final training loss, and the classifier."""

    train_accuracy: float
    test_accuracy: float
    final_loss: float
    classifier: nn.Linear


def _accuracy(classifier: nn.Module, x: Tensor, y: Tensor, chunk: int = 8192) -> float:
    with torch.no_grad():
        correct = sum(
            int((classifier(x[i : i + chunk]).argmax(1) == y[i : i + chunk]).sum()) for i in range(0, len(x), chunk)
        )
    return correct / max(1, len(x))


def linear_probe(
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    config: LinearProbeConfig | None = None,
    *,
    num_classes: int | None = None,
) -> LinearProbeResult:
    """Train a linear classifier on ``train`` features and report its accuracy on ``test``.

    Args:
        train: ``(N, ...)`` frozen features (flattened to ``(N, D)``).
        train_labels: ``(N,)`` class indices in ``[0, C)``.
        test: ``(M, ...)`` features of the evaluation set.
        test_labels: ``(M,)`` class indices.
        config: the protocol (default :meth:`LinearProbeConfig.paper`).
        num_classes: ``C`` (default: one more than the largest label seen).

    Returns:
        Training and test accuracy, the last loss and the trained classifier (on standardised
        features when ``config.standardize``).

    Example:
        >>> x = torch.randn(200, 5); y = (x[:, 0] > 0).long()
        >>> linear_probe(x, y, x, y, LinearProbeConfig.fast(epochs=30)).test_accuracy > 0.95
        True
    """
    config = config or LinearProbeConfig.paper()
    x, xt = train.flatten(1).float(), test.flatten(1).float()
    y, yt = train_labels.long().to(x.device), test_labels.long().to(xt.device)
    if x.shape[0] != y.shape[0] or xt.shape[0] != yt.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if x.shape[1] != xt.shape[1]:
        raise ValueError(f"train features have {x.shape[1]} dimensions, test features {xt.shape[1]}")
    if (y < 0).any() or (yt < 0).any():
        raise ValueError("labels must be class indices >= 0 (this split has unlabelled images)")
    classes = num_classes or int(max(int(y.max()), int(yt.max()))) + 1
    if config.standardize:
        mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
        x, xt = (x - mean) / std, (xt - mean) / std

    # Small steps are dominated by thread hand-offs, which on a busy CPU cost 30x the arithmetic: run them
    # on one thread (the result is the same).
    threads = torch.get_num_threads()
    small = x.device.type == "cpu" and config.batch_size * x.shape[1] < 1 << 20
    torch.set_num_threads(1 if small else threads)
    try:
        return _train(x, y, xt, yt, config, classes)
    finally:
        torch.set_num_threads(threads)


def _train(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, config: LinearProbeConfig, classes: int) -> LinearProbeResult:
    generator = torch.Generator().manual_seed(config.seed)
    classifier = nn.Linear(x.shape[1], classes).to(x.device)
    with torch.no_grad():  # a seeded init, independent of the global random state
        bound = x.shape[1] ** -0.5
        classifier.weight.copy_(torch.empty(classifier.weight.shape).uniform_(-bound, bound, generator=generator))
        classifier.bias.zero_()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)  # fmt: skip
    steps_per_epoch = -(-x.shape[0] // config.batch_size)
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    milestones = sorted({round(m * epochs) for m in config.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)
    loss_fn = nn.CrossEntropyLoss()
    loss = torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for start in range(0, x.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = loss_fn(classifier(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    classifier.eval()
    return LinearProbeResult(
        _accuracy(classifier, x, y), _accuracy(classifier, xt, yt), float(loss.detach()), classifier
    )
