"""fisher subpackage."""

__all__: list[str] = []

# -- engineer F: order parameters (Karakida eqs. 5-7, 11) ----------------------
from normfield.fisher.order_params import OrderParameters, order_parameters  # noqa: E402

__all__ += ["OrderParameters", "order_parameters"]
# -- end engineer F -------------------------------------------------------------

# -- engineer K: networks, Fisher dual engine, theory ---------------------------
from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward, sample_inputs  # noqa: E402
from normfield.fisher.dual import FisherResult, fisher_dual, fisher_dual_variants, fisher_spectrum  # noqa: E402
from normfield.fisher.theory import (  # noqa: E402
    fisher_theory,
    layer_norm_order_parameters,
    theory_last_bn,
    theory_layer_norm,
    theory_mean_subtraction,
    theory_middle_bn,
    theory_no_norm,
)

__all__ += ["MLPConfig", "init_mlp", "mlp_forward", "sample_inputs", "FisherResult", "fisher_dual",
            "fisher_dual_variants", "fisher_spectrum", "fisher_theory", "theory_no_norm",
            "theory_mean_subtraction", "theory_last_bn", "theory_middle_bn", "theory_layer_norm",
            "layer_norm_order_parameters"]
# -- end engineer K ---------------------------------------------------------------
