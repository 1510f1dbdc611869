"""Normalization diagnostics for any PyTorch ``nn.Module``.

``nf.analyze(model, inputs)`` returns the per-layer batch Gram diagnostics of
Joudaki et al. (2023) and the Fisher/NTK eigenvalue statistics of Karakida et
al. (2019) for the model on one batch, differentiating the whole batch at once.
"""

from normfield.analyze.api import WHAT_IF, analyze
from normfield.analyze.hooks import DEFAULT_LAYER_TYPES, gram_diagnostics
from normfield.analyze.ntk import FisherSpectrum, fisher_ntk
from normfield.analyze.plots import plot_layer_conditioning, plot_spectrum
from normfield.analyze.result import AnalysisResult

__all__ = ["analyze", "AnalysisResult", "FisherSpectrum", "fisher_ntk", "gram_diagnostics", "plot_spectrum",
           "plot_layer_conditioning"]
