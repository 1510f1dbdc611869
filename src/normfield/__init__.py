"""normfield: normalization in random neural networks.

Mean-field predictions of Joudaki, Daneshmand & Bach (ICML 2023) and
Karakida, Akaho & Amari (NeurIPS 2019) for any activation, finite-width
simulations that test them, the papers' experiments as registered claims,
and the same diagnostics for any PyTorch model.

The names below are the public API, grouped by topic. Everything else stays
importable from its module (``normfield.gram.spectra``, ``normfield.fisher.dual``,
``normfield.experiments.train``, ...); each module declares its own ``__all__``.
"""

from normfield._version import __version__
from normfield.errors import NormfieldError

# -- mean field: activations, Gaussian kernels, the BN fixed point G*, the Gram map, order parameters
from normfield.core.activations import Activation, get_activation, list_activations
from normfield.core.gaussian import gaussian_expectation
from normfield.core.kernels import derivative_kernel, kernel, mean_activation
from normfield.gram.fixed_point import FixedPoint, fixed_point
from normfield.gram.meanfield import gram_map, mean_field_trajectory
from normfield.fisher.order_params import OrderParameters, order_parameters

# -- finite-width simulation: Gram chains of BN-MLPs and their fits (Joudaki et al.)
from normfield.gram.chain import ChainResult, simulate_chain
from normfield.gram.measure import gram_chain
from normfield.gram.fit import fit_theorem1, loglog_slope
from normfield.gram.spectra import mp_pdf, spectral_distance

# -- Fisher information of wide random nets, every normalization placement (Karakida et al.)
from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward, sample_inputs
from normfield.fisher.placements import PLACEMENTS
from normfield.fisher.theory import Prediction, fisher_theory
from normfield.fisher.result import FisherResult
from normfield.fisher.dual import fisher_dual
from normfield.experiments.fisher import fisher_spectrum

# -- training: learning-rate grids against 2/λ_max, BN-MLPs on real data
from normfield.train.lr_grid import LRGridSettings, summarize_lr_grid
from normfield.train.students import train_students
from normfield.experiments.train import lr_grid
from normfield.train.bn_mlp import BNMLPConfig, train_bn_mlp
from normfield.train.data import load_dataset

# -- your model: the Fisher/NTK dual and layer Grams of any nn.Module, train-mode BN exact
from normfield.analyze.api import analyze
from normfield.analyze.result import AnalysisResult
from normfield.analyze.plots import plot_spectrum
from normfield.analyze.hooks import gram_diagnostics
from normfield.analyze.tracking import SharpnessTracker
from normfield.analyze.tracking_plots import plot_tracking
from normfield.analyze.operator import CurvatureOperator
from normfield.analyze.settings import Accuracy

# -- theory for your model: infinite-width NNGP/NTK of batch-normalized compositions
#    (the kernel layers themselves: ``normfield.infinite``)
from normfield.infinite.predict import KernelPrediction, predict
from normfield.infinite.simulate import FiniteKernels, finite_kernels

# -- sweeps, claims and reports
from normfield.runner.sweep import run_sweep
from normfield.runner.cache import ResultCache
from normfield.claims.registry import ClaimContext, ClaimResult, all_claims, run_claims
from normfield.report.writer import write_report

__all__ = [
    "__version__", "NormfieldError",
    # mean field
    "Activation", "get_activation", "list_activations", "gaussian_expectation", "kernel", "derivative_kernel",
    "mean_activation", "FixedPoint", "fixed_point", "gram_map", "mean_field_trajectory", "OrderParameters",
    "order_parameters",
    # finite-width simulation
    "ChainResult", "simulate_chain", "gram_chain", "fit_theorem1", "loglog_slope", "mp_pdf", "spectral_distance",
    # Fisher information
    "MLPConfig", "init_mlp", "mlp_forward", "sample_inputs", "PLACEMENTS", "Prediction", "fisher_theory",
    "FisherResult", "fisher_dual", "fisher_spectrum",
    # training
    "LRGridSettings", "lr_grid", "summarize_lr_grid", "train_students", "BNMLPConfig", "train_bn_mlp",
    "load_dataset",
    # your model
    "analyze", "AnalysisResult", "plot_spectrum", "gram_diagnostics", "SharpnessTracker", "plot_tracking",
    "CurvatureOperator", "Accuracy",
    # theory for your model
    "predict", "KernelPrediction", "finite_kernels", "FiniteKernels",
    # sweeps, claims, reports
    "run_sweep", "ResultCache", "ClaimContext", "ClaimResult", "all_claims", "run_claims", "write_report",
]
