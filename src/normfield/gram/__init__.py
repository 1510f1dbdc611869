"""Gram matrices of batch-normalised random MLPs (Joudaki et al. 2023): the fixed point G*, the
mean-field map, finite-width chains, spectra and Theorem 1 fits."""

__all__: list[str] = []

# fixed point G*, mean-field Gram map
from normfield.gram.fixed_point import FixedPoint, fixed_point  # noqa: E402
from normfield.gram.meanfield import gram_map, gram_map_mc, mean_field_trajectory  # noqa: E402

__all__ += ["FixedPoint", "fixed_point", "gram_map", "gram_map_mc", "mean_field_trajectory"]

# finite-width chains, spectra, Theorem 1 fits
from normfield.gram.chain import ChainResult, simulate_chain  # noqa: E402
from normfield.gram.measure import gram_chain, summarize_chain  # noqa: E402
from normfield.gram.fit import SlopeFit, Theorem1Fit, fit_theorem1, loglog_slope  # noqa: E402
from normfield.gram.spectra import (  # noqa: E402
    bulk_deviation,
    count_outliers,
    ks_distance,
    mp_cdf,
    mp_pdf,
    mp_quantile,
    mp_singular_cdf,
    mp_singular_pdf,
    mp_support,
    outlier_mask,
    spectral_distance,
)

__all__ += [
    "ChainResult", "simulate_chain", "gram_chain", "summarize_chain",
    "Theorem1Fit", "SlopeFit", "fit_theorem1", "loglog_slope",
    "mp_support", "mp_pdf", "mp_cdf", "mp_quantile", "mp_singular_pdf", "mp_singular_cdf",
    "ks_distance", "outlier_mask", "count_outliers", "spectral_distance", "bulk_deviation",
]
