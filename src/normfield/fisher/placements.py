"""Normalization placements of Karakida, Akaho & Amari 2019, one object each.

A placement says where the network is normalized and carries everything that depends on
it, side by side: the settings it needs (:meth:`Placement.check`), its forward-pass steps
(:meth:`Placement.hidden`, :meth:`Placement.per_sample_output`,
:meth:`Placement.batch_output`), the projection of the un-normalized reversed FIM that the
fast route applies (:meth:`Placement.project`, or "general route only"), the output
statistics its theorem needs (:meth:`Placement.output_stats`) and the theorem itself
(:meth:`Placement.theorem`, a typed :class:`~normfield.fisher.theory.Prediction`).

Statistics are over all ``T`` samples (the full batch, as in the paper), ``γ = 1``,
``β = 0``; the arithmetic is :mod:`normfield.core.normalize` (biased variance, no ε):

=============  ======================================  ==========================  ============
placement      forward pass                            Fisher dual                 theorem
=============  ======================================  ==========================  ============
``none``       plain network, eq. (1)                  fast (no projection)        Thm 2.2
``last-mean``  ``f = u^L − E_t[u^L]``, eq. (15)        fast, (S.18)–(S.20)         Thm 3.3
``last-bn``    ``f = (u^L − μ)/σ``, eq. (13)–(14)      fast, (S.43)–(S.48)         eq. (19)
``middle-bn``  BN of hidden layers, eq. (20)–(21)      general route only          Thm 3.4
``layer``      LN of every layer, eq. (24)–(25)        general route only          Thm 4.1
=============  ======================================  ==========================  ============
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from normfield.core.normalize import center, standardize
from normfield.core.validation import check_choice
from normfield.errors import NormfieldError
from normfield.fisher import theory
from normfield.fisher.theory import ConfigLike, Prediction

__all__ = ["Placement", "PLACEMENTS", "NORMS", "FAST_NORMS", "SEPARABLE_NORMS", "get_placement"]


@dataclass(frozen=True)
class Placement:
    """The un-normalized network (``none``): the base every placement refines.

    Attributes:
        name: the placement's name (``MLPConfig.norm``).
        forward_equation: where the paper defines its forward pass.
        theorem_name: the theorem that predicts its FIM spectrum.
        batch_statistics: normalizes with statistics over the samples (needs ``T >= 2``).
        fast: the fast route's projection of the un-normalized dual applies
            (:meth:`project`); otherwise the general route is the only exact one.
        separable: samples interact only through the output map (per-sample Jacobians plus
            the exact output-map Jacobian give the dual); ``False`` when hidden layers couple them.
        mean_gradient_direction: the top eigenvector tends to span{E[∇θ f_k]} (Thm 3.1) and the
            cosine is measured; ``False`` where the output is centred (that span is null).
    """

    name: str = "none"
    forward_equation: str = "eq. (1)–(3)"
    theorem_name: str = "Thm 2.2"
    batch_statistics: bool = False
    fast: bool = True
    separable: bool = True
    mean_gradient_direction: bool = True

    # -- settings ----------------------------------------------------------------------------
    def check(self, config: ConfigLike) -> None:
        """Refuse settings the placement cannot normalize (raises :class:`NormfieldError`)."""
        self.check_samples(config.samples, "samples")

    def check_samples(self, T: int, argument: str) -> None:
        """Batch statistics of one sample are the sample itself: refuse ``T < 2``."""
        if self.batch_statistics and T < 2:
            what = "samples must be" if argument == "samples" else "X must hold"
            raise NormfieldError(
                f"{what} >= 2 samples under norm={self.name} (the batch mean of one sample is the "
                f"sample itself, so the normalized output is constant), got {T}", argument=argument)

    def check_spectrum(self, config: ConfigLike) -> None:
        """Refuse a setting whose FIM vanishes identically whatever θ, where spectrum statistics and
        theorems say nothing (the dual itself can still be built, and is zero)."""

    # -- forward pass ------------------------------------------------------------------------
    def hidden(self, u: torch.Tensor) -> torch.Tensor:
        """Normalization of a hidden pre-activation ``u^l`` (T × M_l) before ``φ``."""
        return u

    def per_sample_output(self, u: torch.Tensor) -> torch.Tensor:
        """The part of the output map acting on each sample separately (T × C → T × C)."""
        return u

    def batch_output(self, u: torch.Tensor) -> torch.Tensor:
        """The part of the output map coupling the samples (T × C → T × C)."""
        return u

    @property
    def has_batch_output(self) -> bool:
        """Whether :meth:`batch_output` is not the identity."""
        return False

    def output(self, u: torch.Tensor) -> torch.Tensor:
        """``f`` from ``u^L``: :meth:`batch_output` of :meth:`per_sample_output`."""
        return self.batch_output(self.per_sample_output(u))

    # -- Fisher dual ---------------------------------------------------------------------------
    def project(self, F: torch.Tensor, uL: torch.Tensor) -> torch.Tensor:
        """The reversed FIM of this placement from the un-normalized one (CT × CT, index k·T + t),
        exactly symmetric; ``uL`` (T × C) is the un-normalized output."""
        if not self.fast:
            raise NormfieldError(f"norm={self.name} couples samples inside the network: its dual has no "
                                 "projection from the un-normalized one; use route='general'", argument="route")
        return F

    def output_stats(self, uL: torch.Tensor) -> dict[str, Any]:
        """Measured output statistics the theorem needs, from ``u^L`` (T × C)."""
        return {}

    # -- theorem ---------------------------------------------------------------------------
    def theorem(self, config: ConfigLike, stats: Mapping[str, Any] | None = None, *,
                regime: str | None = None) -> Prediction:
        """Thm 2.2, eq. (10)–(11) (:func:`~normfield.fisher.theory.theory_no_norm`)."""
        return theory.theory_no_norm(config)


@dataclass(frozen=True)
class LastMean(Placement):
    """Last-layer mean subtraction, eq. (15): ``f_k(t) = u^L_k(t) − E_t[u^L_k]``."""

    name: str = "last-mean"
    forward_equation: str = "eq. (15)"
    theorem_name: str = "Thm 3.3"
    batch_statistics: bool = True
    mean_gradient_direction: bool = False

    def batch_output(self, u: torch.Tensor) -> torch.Tensor:
        return center(u, 0)

    @property
    def has_batch_output(self) -> bool:
        return True

    def project(self, F: torch.Tensor, uL: torch.Tensor) -> torch.Tensor:
        """``(I_C ⊗ G) F* (I_C ⊗ G)`` with ``G = I − 11ᵀ/T`` ((S.18)–(S.20))."""
        T, C = uL.shape
        F4 = center(center(F.view(C, T, C, T), 1), 3)
        F = F4.reshape(C * T, C * T)
        return 0.5 * (F + F.T)

    def theorem(self, config: ConfigLike, stats: Mapping[str, Any] | None = None, *,
                regime: str | None = None) -> Prediction:
        """Thm 3.3, eq. (16)–(18) (:func:`~normfield.fisher.theory.theory_mean_subtraction`)."""
        return theory.theory_mean_subtraction(config, regime=regime)


@dataclass(frozen=True)
class LastBN(Placement):
    """Last-layer batch norm, eq. (13)–(14): ``f_k(t) = (u^L_k(t) − μ_k)/σ_k``, biased σ_k."""

    name: str = "last-bn"
    forward_equation: str = "eq. (13)–(14)"
    theorem_name: str = "eq. (19)"
    batch_statistics: bool = True
    mean_gradient_direction: bool = False

    def check_spectrum(self, config: ConfigLike) -> None:
        if config.samples == 2:
            raise NormfieldError(
                "samples = 2 under last-layer batch norm: the FIM is exactly zero (each normalized output "
                "is ±1 whatever θ; Karakida et al. 2019, App. E remark); use samples >= 3", argument="samples")

    def batch_output(self, u: torch.Tensor) -> torch.Tensor:
        return standardize(u, 0)

    @property
    def has_batch_output(self) -> bool:
        return True

    def project(self, F: torch.Tensor, uL: torch.Tensor) -> torch.Tensor:
        """``D Π F* Π D`` with ``Π_k = G − n_k n_kᵀ``, ``n_k = ū_k/(√T σ_k)``, ``D = diag(1/σ_k)``.

        The symmetric form of ``Q F*_{L,mBN}`` of (S.46)–(S.48): same non-zero eigenvalues, because
        ``Q(k,k) = Π_k/σ_k²`` restricted to the centred subspace is a scaled projector.
        """
        T, C = uL.shape
        F4 = center(center(F.view(C, T, C, T), 1), 3)
        ubar = center(uL, 0)
        sigma = torch.sqrt((ubar * ubar).mean(dim=0))  # (C,)
        nvec = (ubar / (math.sqrt(T) * sigma)).T  # (C, T), unit columns
        # (I - n_k n_kᵀ) X (I - n_k' n_k'ᵀ) block by block, vectorised over k, k'
        left = torch.einsum("kt,ktjs->kjs", nvec, F4)  # n_kᵀ X_{kk'}: (C, C, T)
        F4 -= nvec.view(C, T, 1, 1) * left.view(C, 1, C, T)
        right = torch.einsum("ktjs,js->ktj", F4, nvec)  # X_{kk'} n_k': (C, T, C)
        F4 -= right.view(C, T, C, 1) * nvec.view(1, 1, C, T)
        s = 1.0 / sigma
        F4 *= s.view(C, 1, 1, 1) * s.view(1, 1, C, 1)
        F = F4.reshape(C * T, C * T)
        return 0.5 * (F + F.T)

    def output_stats(self, uL: torch.Tensor) -> dict[str, Any]:
        """``sigma`` (C,): the batch standard deviations σ_k(θ) of the outputs (eq. (14))."""
        c = center(uL, 0)
        return {"sigma": torch.sqrt((c * c).mean(dim=0)).detach().cpu().numpy().astype(np.float64)}

    def theorem(self, config: ConfigLike, stats: Mapping[str, Any] | None = None, *,
                regime: str | None = None) -> Prediction:
        """Eq. (19) with the measured σ_k (``stats["sigma"]``) or their sums ``Q1``, ``Q2``
        (:func:`~normfield.fisher.theory.theory_last_bn`)."""
        stats = stats or {}
        if "sigma" in stats:
            return theory.theory_last_bn(config, stats["sigma"])
        if "Q1" in stats and "Q2" in stats:
            return theory.theory_last_bn(config, Q1=stats["Q1"], Q2=stats["Q2"])
        raise NormfieldError("eq. (19) needs the measured output std's: pass output_stats={'sigma': ...} "
                             "(FisherResult.output_stats) or {'Q1': .., 'Q2': ..}", argument="output_stats")


@dataclass(frozen=True)
class MiddleBN(Placement):
    """Batch norm of every hidden pre-activation, eq. (20)–(21): ``h^l = φ((u^l − μ^l)/σ^l)``;
    the output is not normalized."""

    name: str = "middle-bn"
    forward_equation: str = "eq. (20)–(21)"
    theorem_name: str = "Thm 3.4"
    batch_statistics: bool = True
    fast: bool = False
    separable: bool = False

    def check(self, config: ConfigLike) -> None:
        super().check(config)
        if config.depth < 2:
            raise NormfieldError("depth must be >= 2 under norm=middle-bn (it normalizes hidden layers)",
                                 argument="depth")

    def hidden(self, u: torch.Tensor) -> torch.Tensor:
        return standardize(u, 0)

    def theorem(self, config: ConfigLike, stats: Mapping[str, Any] | None = None, *,
                regime: str | None = None) -> Prediction:
        """Thm 3.4, eq. (22) (:func:`~normfield.fisher.theory.theory_middle_bn`)."""
        return theory.theory_middle_bn(config)


@dataclass(frozen=True)
class LayerNorm(Placement):
    """Layer norm of every layer's pre-activation over its units, the output included,
    eq. (24)–(25): statistics per sample."""

    name: str = "layer"
    forward_equation: str = "eq. (24)–(25)"
    theorem_name: str = "Thm 4.1"
    fast: bool = False
    mean_gradient_direction: bool = False

    def check(self, config: ConfigLike) -> None:
        if config.outputs < 2:
            raise NormfieldError(
                "outputs must be >= 2 under norm=layer (layer norm of a single output unit divides "
                "0 by 0); the theory (Thm 4.1) needs outputs >= 3", argument="outputs")
        small = [l for l, m in enumerate(config.widths) if l >= 1 and m < 2]
        if small:
            raise NormfieldError(
                f"hidden widths must be >= 2 under norm=layer (layer norm over one unit divides 0 by 0); "
                f"M_{small[0]} = {config.widths[small[0]]}", argument="width")

    def check_spectrum(self, config: ConfigLike) -> None:
        if config.outputs == 2:
            raise NormfieldError(
                "outputs = 2 under layer norm: the FIM is exactly zero (ū_1 = −ū_2 and σ(t) = |ū_1(t)|, so "
                "each output is ±1 whatever θ; Karakida et al. 2019, App. E remark); use outputs >= 3",
                argument="outputs")

    def hidden(self, u: torch.Tensor) -> torch.Tensor:
        return standardize(u, 1)

    def per_sample_output(self, u: torch.Tensor) -> torch.Tensor:
        return standardize(u, 1)

    def output_stats(self, uL: torch.Tensor) -> dict[str, Any]:
        """η1, η2, η3 of Appendix E.2.2 from the output layer norm's statistics.

        σ(t)² = Σ_k ū_k(t)²/C with ū = u^L − mean_k u^L; η1 = mean_t σ⁻², η2 = mean_t σ⁻⁴,
        η3² = (1/T²) Σ_{t,t'} g(t,t')²/(σ(t)²σ(t')²), g(t,t') = Σ_a ū_a(t)ū_a(t')/(C σ(t)σ(t')).
        """
        C = uL.shape[1]
        c = center(uL, 1)
        s2 = (c * c).mean(dim=1)  # (T,)
        nrm = standardize(uL, 1)
        g = (nrm @ nrm.T) / C
        w = 1.0 / s2
        eta3sq = ((g * g) * w.view(-1, 1) * w.view(1, -1)).mean()
        return {"eta1": float(w.mean()), "eta2": float((w * w).mean()), "eta3": float(torch.sqrt(eta3sq))}

    def theorem(self, config: ConfigLike, stats: Mapping[str, Any] | None = None, *,
                regime: str | None = None) -> Prediction:
        """Thm 4.1, eq. (26)–(27) with the measured η's (:func:`~normfield.fisher.theory.theory_layer_norm`)."""
        stats = stats or {}
        if config.outputs != 2 and not all(k in stats for k in ("eta1", "eta2", "eta3")):
            raise NormfieldError("Thm 4.1 needs the measured η1, η2, η3: pass output_stats "
                                 "(FisherResult.output_stats)", argument="output_stats")
        return theory.theory_layer_norm(config, stats)


#: The placements by name, in the paper's order.
PLACEMENTS: dict[str, Placement] = {p.name: p for p in (Placement(), LastMean(), LastBN(), MiddleBN(), LayerNorm())}

#: Normalization placements, in the paper's order.
NORMS = tuple(PLACEMENTS)

#: Placements the fast route handles (a projection of the un-normalized dual exists).
FAST_NORMS = tuple(n for n, p in PLACEMENTS.items() if p.fast)

#: Placements whose samples meet only in the output map (see :attr:`Placement.separable`).
SEPARABLE_NORMS = tuple(n for n, p in PLACEMENTS.items() if p.separable)


def get_placement(norm: str | Placement) -> Placement:
    """The placement object of ``norm`` (one of :data:`NORMS`)."""
    if isinstance(norm, Placement):
        return norm
    return PLACEMENTS[check_choice("norm", norm, NORMS)]
