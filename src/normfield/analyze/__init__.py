"""Normalization diagnostics for any PyTorch ``nn.Module``.

``nf.analyze(model, inputs)`` returns the per-layer batch Gram diagnostics of
Joudaki et al. (2023) and the curvature statistics of Karakida et al. (2019)
— the Fisher of the squared loss by default, the Fisher (GGN) of softmax
cross-entropy or the loss Hessian on request — for the model on one batch or
a whole data set, differentiating each batch at once. The curvature itself is
one object, :class:`CurvatureOperator`, built once and reused; the accuracy
knobs are one object, :class:`Accuracy`.
"""

from normfield.analyze.api import WHAT_IF, analyze
from normfield.analyze.hooks import DEFAULT_LAYER_TYPES, gram_diagnostics
from normfield.analyze.losses import CURVATURES, LOSSES
from normfield.analyze.ntk import FisherSpectrum, fisher_ntk
from normfield.analyze.operator import CurvatureOperator
from normfield.analyze.plots import plot_layer_conditioning, plot_spectrum
from normfield.analyze.result import AnalysisResult
from normfield.analyze.settings import Accuracy

__all__ = ["analyze", "AnalysisResult", "FisherSpectrum", "fisher_ntk", "gram_diagnostics", "plot_spectrum",
           "plot_layer_conditioning", "CurvatureOperator", "Accuracy", "CURVATURES", "LOSSES"]
