"""Published figures the runs are compared with: the papers' test errors per preset, and a
reference learning curve a paper-preset run can be checked against while it trains."""

from __future__ import annotations

#: Published test error (%) per preset: (mean, std or None, source). Rasmus et al. 2015
#: (NeurIPS version, Tables 1-3) and Pezeshki et al. 2016 (AMLP, abstract). Entries whose
#: source ends in ", unverified" were not checked against the paper's text here.
PUBLISHED: dict[str, tuple[float, float | None, str]] = {
    "full_100": (1.06, 0.37, "Rasmus 2015 Table 1"),
    "full_1000": (0.84, 0.08, "Rasmus 2015 Table 1"),
    "full_all": (0.57, 0.02, "Rasmus 2015 Table 1"),
    "bottom_100": (1.09, 0.32, "Rasmus 2015 Table 1, unverified"),
    "gamma_100": (3.06, 1.44, "Rasmus 2015 Table 1, unverified"),
    "baseline_100": (21.74, 1.77, "Rasmus 2015 Table 1, unverified"),
    "baseline_1000": (5.70, 0.20, "Rasmus 2015 Table 1, unverified"),
    "baseline_all": (0.80, 0.03, "Rasmus 2015 Table 1"),
    "amlp_100": (1.00, None, "Pezeshki 2016 abstract"),
    "conv_small_gamma_100": (0.89, 0.50, "Rasmus 2015 Table 2"),
    "conv_fc_100": (0.99, 0.15, "Rasmus 2015 Table 2, unverified"),
    "conv_small_baseline_100": (6.43, 0.84, "Rasmus 2015 Table 2, unverified"),
    "conv_large_gamma_4000": (20.40, 0.47, "Rasmus 2015 Table 3"),
    "conv_large_baseline_4000": (23.33, 0.61, "Rasmus 2015 Table 3, unverified"),
}

#: Test error (%) by epoch of an independent implementation of the full ladder, 100 labels,
#: label seed 0 (../shared/LADDER_SPEC.md): a faithful run lands near it.
LEARNING_CURVES: dict[str, dict[int, float]] = {
    "full_100": {1: 11.9, 3: 5.2, 10: 2.7, 30: 1.6, 50: 1.4, 100: 1.0, 150: 0.96},
}
