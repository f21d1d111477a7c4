r"""Cross-modal objectives for two towers: ``x = f(images)``, ``y = g(captions)``, row ``i`` a pair.

Written as the paper's losses are (:mod:`hsrl.losses`), and usable in the same objective strings:

* ``align:1,alpha=2`` — cross-modal alignment :math:`\mathbb{E}\lVert f(x_i) - g(y_i) \rVert^\alpha` (the paper's term).
* ``uniform:1,t=2`` — uniformity of each modality, averaged: :math:`(L_u(f) + L_u(g)) / 2`.
* ``uniform_union:1,t=2`` — uniformity of both modalities together, :math:`L_u([f; g])`: it also pushes
  the two clouds onto each other, against the modality gap.
* ``clip:1,tau=0.07`` — CLIP's symmetric InfoNCE on :math:`s \cdot f g^\top` (Radford et al. 2021):
  :math:`\tfrac12[\mathrm{CE}(S, I) + \mathrm{CE}(S^\top, I)]`, :math:`S_{ij} = s\, f_i^\top g_j`.
* ``siglip:1,t=10`` — SigLIP's pairwise sigmoid loss (Zhai et al. 2023):
  :math:`-\frac{1}{N}\sum_{i,j} \log \sigma\big(z_{ij}(t\, f_i^\top g_j + b)\big)`, :math:`z_{ij} = 1` if
  :math:`i = j` else :math:`-1` (the paper's normalisation: a sum over pairs divided by the batch size),
  with the bias :math:`b` starting at SigLIP's −10.

In a plain :class:`hsrl.losses.HypersphereLoss` the scale and bias are the fixed numbers of the string. In
:class:`CrossModalLoss` bound to a :class:`hsrl.models.two_tower.TwoTowerModel` they are the model's learnable
``log_logit_scale`` (``s = exp``, clamped at 100 as CLIP does) and ``logit_bias``, which the string's numbers
only initialise (:func:`initial_scales`).

Example:
    >>> import torch, torch.nn.functional as F
    >>> x, y = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
    >>> loss = CrossModalLoss("align:1 + uniform:1 + clip:1,tau=0.07")
    >>> sorted(loss.terms(x, y))[:3]
    ['align', 'clip', 'loss']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hsrl.losses import (
    SIGLIP_BIAS,
    LossTerm,
    _check_embeddings,
    clip_loss,
    parse_objective,
    siglip_loss,
    term_value,
    uniform_loss,
    uniform_union_loss,
    weighted_terms,
)

__all__ = [
    "MAX_LOGIT_SCALE",
    "CrossModalLoss",
    "clip_loss",
    "initial_scales",
    "modality_gap",
    "siglip_loss",
    "uniform_union_loss",
]

#: CLIP clamps its learnable scale 1/τ at 100 (τ ≥ 0.01) so the logits cannot blow up.
MAX_LOGIT_SCALE = 100.0


def modality_gap(x: Tensor, y: Tensor) -> Tensor:
    r"""The distance between the modalities' centres, :math:`\lVert \bar x - \bar y \rVert_2` (Liang et al. 2022)."""
    _check_embeddings(x, "image embeddings")
    _check_embeddings(y, "text embeddings")
    return torch.linalg.vector_norm(x.float().mean(0) - y.float().mean(0))


def initial_scales(objective: str | list[LossTerm]) -> tuple[float, float]:
    """``(logit scale, logit bias)`` a model should start from for ``objective`` (CLIP: 1/τ; SigLIP: t and −10)."""
    loss = CrossModalLoss(objective)
    by_name = {term.name: term for term in loss.objective}
    if "siglip" in by_name:
        return float(by_name["siglip"].params["t"]), SIGLIP_BIAS
    if "clip" in by_name:
        return 1.0 / float(by_name["clip"].params["tau"]), SIGLIP_BIAS
    return 10.0, SIGLIP_BIAS


class CrossModalLoss(nn.Module):
    """An image–text objective (``x`` images, ``y`` captions) with learnable CLIP/SigLIP scales.

    Args:
        objective: e.g. ``"align:1,alpha=2 + uniform:1,t=2"`` or ``"clip:1"``.
        model: the :class:`~hsrl.models.two_tower.TwoTowerModel` whose ``log_logit_scale`` and ``logit_bias``
            the ``clip``/``siglip`` terms use (learned with the model); without one, the string's numbers.
        gather: gather both modalities from every process first (``fit`` gathers itself).

    ``terms`` also reports, detached and unweighted, the batch's cross-modal alignment (``xm_align``),
    per-modality uniformity (``uniform_image``, ``uniform_text``) and ``modality_gap``, so ``fit`` logs them.
    """

    def __init__(self, objective: str | list[LossTerm], model: nn.Module | None = None, *, gather: bool = False):
        super().__init__()
        self.objective = parse_objective(objective) if isinstance(objective, str) else list(objective)
        if not self.objective:
            raise ValueError("an objective needs at least one term")
        self.gather = gather
        # Not a submodule: the loss must not own (or save) the model's parameters.
        self.__dict__["scales_from"] = model

    @property
    def learnable(self) -> bool:
        return self.scales_from is not None

    def uses_scales(self) -> bool:
        """Whether a term reads the logit scale or bias (else the model should freeze them)."""
        return any(term.name in {"clip", "siglip"} for term in self.objective)

    def _scale_and_bias(self) -> tuple[Tensor, Tensor]:
        model = self.scales_from
        return model.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE), model.logit_bias

    def _term_value(self, term: LossTerm, x: Tensor, y: Tensor) -> Tensor:
        """CLIP and SigLIP read the model's learned scale (and bias) when there is a model; every other term,
        or a loss without a model, takes the string's numbers."""
        if term.name == "clip" and self.learnable:
            return clip_loss(x, y, self._scale_and_bias()[0])
        if term.name == "siglip" and self.learnable:
            return siglip_loss(x, y, *self._scale_and_bias())
        return term_value(term, x, y)

    def terms(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.gather:
            from hsrl.distributed import gather_with_grad

            x, y = gather_with_grad(x), gather_with_grad(y)
        values = weighted_terms(self.objective, x, y, self._term_value)
        values.update(self.diagnostics(x, y))
        if self.learnable and self.uses_scales():
            scale, bias = self._scale_and_bias()
            values["logit_scale"], values["logit_bias"] = scale.detach(), bias.detach()
        return values

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.terms(x, y)["loss"]

    def extra_repr(self) -> str:
        return " + ".join(str(term) for term in self.objective)

    @staticmethod
    def diagnostics(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Cross-modal alignment (α=2), per-modality uniformity (t=2) and the modality gap of a batch."""
        with torch.no_grad():
            xd, yd = x.detach().float(), y.detach().float()
            out = {"xm_align": (xd - yd).pow(2).sum(1).mean(), "modality_gap": modality_gap(xd, yd)}
            if xd.shape[0] > 1:
                out["uniform_image"] = uniform_loss(xd, t=2.0, normalize=True)
                out["uniform_text"] = uniform_loss(yd, t=2.0, normalize=True)
        return out
