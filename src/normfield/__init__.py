"""normfield: normalization in random neural networks.

Mean-field predictions of Joudaki, Daneshmand & Bach (ICML 2023) and
Karakida, Akaho & Amari (NeurIPS 2019) for any activation, finite-width
simulations that test them, the papers' experiments as registered claims,
and the same diagnostics for any PyTorch model.

The public API is re-exported here, grouped by topic; each subpackage
declares its own ``__all__``.
"""

from normfield._version import __version__
from normfield.errors import NormfieldError

# -- core: activations, Gaussian integrals, linear algebra -------------------
from normfield.core import *  # noqa: F401,F403
from normfield.core import __all__ as _core_all

# -- Joudaki et al.: fixed point, mean-field Gram map, chains, spectra --------
from normfield.gram import *  # noqa: F401,F403
from normfield.gram import __all__ as _gram_all

# -- Karakida et al.: order parameters, Fisher theory and engines ------------
from normfield.fisher import *  # noqa: F401,F403
from normfield.fisher import __all__ as _fisher_all

# -- training experiments -----------------------------------------------------
from normfield.train import *  # noqa: F401,F403
from normfield.train import __all__ as _train_all

# -- diagnostics for any nn.Module -------------------------------------------
from normfield.analyze import *  # noqa: F401,F403
from normfield.analyze import __all__ as _analyze_all

# -- sweeps, claims, report ----------------------------------------------------
from normfield.runner import *  # noqa: F401,F403
from normfield.runner import __all__ as _runner_all
from normfield.claims import ClaimContext, ClaimResult, all_claims, run_claims

__all__ = [
    "__version__",
    "NormfieldError",
    *_core_all,
    *_gram_all,
    *_fisher_all,
    *_train_all,
    *_analyze_all,
    *_runner_all,
    "ClaimContext",
    "ClaimResult",
    "all_claims",
    "run_claims",
]
