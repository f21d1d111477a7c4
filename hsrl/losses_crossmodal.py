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
import torch.nn.functional as F
from torch import Tensor, nn

from hsrl.losses import HypersphereLoss, LossTerm, _check_embeddings, _on_sphere, register_term, uniform_loss

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


def _paired(x: Tensor, y: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    _check_embeddings(x, "image embeddings")
    _check_embeddings(y, "text embeddings")
    if x.shape != y.shape:
        raise ValueError(f"image and text embeddings must be paired row for row, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")  # fmt: skip
    return _on_sphere(x, "image embeddings", normalize), _on_sphere(y, "text embeddings", normalize)


def clip_loss(x: Tensor, y: Tensor, logit_scale: Tensor | float, *, normalize: bool = False) -> Tensor:
    r"""CLIP's symmetric InfoNCE: :math:`\tfrac12[\mathrm{CE}(s\,xy^\top, I) + \mathrm{CE}(s\,yx^\top, I)]`.

    Args:
        x: ``(N, d)`` unit image embeddings.
        y: ``(N, d)`` unit caption embeddings, row ``i`` the caption of image ``i``.
        logit_scale: :math:`s = 1/\tau` (a tensor to learn it).

    Example:
        >>> x = F.normalize(torch.randn(4, 3), dim=1)
        >>> float(clip_loss(x, x, 100.0)) < float(clip_loss(x, x.roll(1, 0), 100.0))
        True
    """
    x, y = _paired(x, y, normalize)
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits = torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device) * (x.float() @ y.float().T)
        target = torch.arange(x.shape[0], device=x.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(
    x: Tensor, y: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float, *, normalize: bool = False
) -> Tensor:
    r"""SigLIP: :math:`-\frac1N \sum_{i,j} \log\sigma(z_{ij}(t\,x_i^\top y_j + b))`, :math:`z = 2I - 1`.

    Example:
        >>> x = F.normalize(torch.randn(4, 3), dim=1)
        >>> float(siglip_loss(x, x, 10.0, -10.0)) < float(siglip_loss(x, -x, 10.0, -10.0))
        True
    """
    x, y = _paired(x, y, normalize)
    with torch.autocast(device_type=x.device.type, enabled=False):
        t = torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device)
        b = torch.as_tensor(logit_bias, dtype=torch.float32, device=x.device)
        logits = t * (x.float() @ y.float().T) + b
        signs = 2 * torch.eye(x.shape[0], device=x.device) - 1
        return -F.logsigmoid(signs * logits).sum() / x.shape[0]


def uniform_union_loss(x: Tensor, y: Tensor, t: float = 2.0, *, normalize: bool = False) -> Tensor:
    r"""Uniformity of both modalities as one set: :math:`L_{uniform}([x; y]; t)` over all distinct pairs."""
    x, y = _paired(x, y, normalize)
    return uniform_loss(torch.cat([x, y]), t=t)


def modality_gap(x: Tensor, y: Tensor) -> Tensor:
    r"""The distance between the modalities' centres, :math:`\lVert \bar x - \bar y \rVert_2` (Liang et al. 2022)."""
    _check_embeddings(x, "image embeddings")
    _check_embeddings(y, "text embeddings")
    return torch.linalg.vector_norm(x.float().mean(0) - y.float().mean(0))


def _clip_term(x: Tensor, y: Tensor, *, tau: float = 0.07) -> Tensor:
    return clip_loss(x, y, 1.0 / tau)


#: SigLIP's initial bias (the paper's b = −10: most pairs are negatives).
SIGLIP_BIAS = -10.0


def _siglip_term(x: Tensor, y: Tensor, *, t: float = 10.0) -> Tensor:
    return siglip_loss(x, y, t, SIGLIP_BIAS)


def _uniform_union_term(x: Tensor, y: Tensor, *, t: float = 2.0) -> Tensor:
    return uniform_union_loss(x, y, t=t)


register_term("clip", _clip_term, {"tau": 0.07})
register_term("siglip", _siglip_term, {"t": 10.0})
register_term("uniform_union", _uniform_union_term, {"t": 2.0})


def initial_scales(objective: str | list[LossTerm]) -> tuple[float, float]:
    """``(logit scale, logit bias)`` a model should start from for ``objective`` (CLIP: 1/τ; SigLIP: t and −10)."""
    loss = CrossModalLoss(objective)
    by_name = {term.name: term for term in loss.objective}
    if "siglip" in by_name:
        return float(by_name["siglip"].params["t"]), SIGLIP_BIAS
    if "clip" in by_name:
        return 1.0 / float(by_name["clip"].params["tau"]), SIGLIP_BIAS
    return 10.0, SIGLIP_BIAS


class CrossModalLoss(HypersphereLoss):
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
        super().__init__(objective, gather=gather)
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

    def terms(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.gather:
            from hsrl.distributed import gather_with_grad

            x, y = gather_with_grad(x), gather_with_grad(y)
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.objective:
            if term.name == "clip" and self.learnable:
                value = clip_loss(x, y, self._scale_and_bias()[0])
            elif term.name == "siglip" and self.learnable:
                value = siglip_loss(x, y, *self._scale_and_bias())
            else:
                from hsrl.losses import TERMS

                value = TERMS[term.name][0](x, y, **term.params)
            values[term.name] = value
            total = value * term.weight if total is None else total + value * term.weight
        assert total is not None
        values["loss"] = total
        values.update(self.diagnostics(x, y))
        if self.learnable and self.uses_scales():
            scale, bias = self._scale_and_bias()
            values["logit_scale"], values["logit_bias"] = scale.detach(), bias.detach()
        return values

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
