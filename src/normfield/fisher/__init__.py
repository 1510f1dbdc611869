"""The Fisher information of random MLPs (Karakida, Akaho & Amari 2019).

Order parameters and their mean-field recursions (:mod:`~normfield.fisher.order_params`),
random networks (:mod:`~normfield.fisher.networks`), the normalization placements as objects
(:mod:`~normfield.fisher.placements`), the exact reversed FIM and its spectrum
(:mod:`~normfield.fisher.dual`), the theorems (:mod:`~normfield.fisher.theory`) and sweep
settings and cells (:mod:`~normfield.fisher.cells`; the sweeps themselves run from
:mod:`normfield.experiments.fisher`).
"""

from normfield.fisher.cells import FisherSweep, fisher_cell
from normfield.fisher.dual import FisherResult, fisher_dual, fisher_dual_variants
from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward, sample_inputs
from normfield.fisher.order_params import OrderParameters, order_parameters
from normfield.fisher.placements import PLACEMENTS, Placement, get_placement
from normfield.fisher.theory import (
    Prediction,
    fisher_theory,
    layer_norm_order_parameters,
    theory_last_bn,
    theory_layer_norm,
    theory_mean_subtraction,
    theory_middle_bn,
    theory_no_norm,
)

__all__ = [
    # order parameters (eqs. 5-7, 11)
    "OrderParameters", "order_parameters",
    # networks and placements
    "MLPConfig", "init_mlp", "mlp_forward", "sample_inputs", "Placement", "PLACEMENTS", "get_placement",
    # the reversed FIM
    "FisherResult", "fisher_dual", "fisher_dual_variants",
    # theorems
    "Prediction", "fisher_theory", "theory_no_norm", "theory_mean_subtraction", "theory_last_bn",
    "theory_middle_bn", "theory_layer_norm", "layer_norm_order_parameters",
    # sweeps
    "FisherSweep", "fisher_cell",
]
