"""Published figures the runs are compared with: the papers' test errors per preset, each
with the dataset it was measured on, and a reference learning curve a paper-preset run can
be checked against while it trains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Published(NamedTuple):
    """A published test error (%) of one preset: mean, std (None where the paper gives
    none), where it is published, and the dataset (a ladder_jax.datasets name) it is for."""

    mean: float
    std: float | None
    source: str
    dataset: str


#: Published test error (%) per preset. Rasmus et al. 2015 (NeurIPS version, Tables 1-3) and
#: Pezeshki et al. 2016 (AMLP, abstract). Entries whose source ends in ", unverified" were
#: not checked against the paper's text here: the copies of Rasmus et al. consulted gave
#: only the paper's opening, not Tables 1-3. amlp_100 is checked against Pezeshki et al.'s
#: abstract ("... 0.97% and 1.0% for semi-supervised settings with 1000 and 100 labeled
#: examples"), which gives no std. conv_large_gamma_4000's 20.40 ± 0.47 is also what Laine
#: & Aila 2017 (Table 1) quote for "Conv-Large, Γ-model (Rasmus et al., 2015)".
PUBLISHED: dict[str, Published] = {
    "full_100": Published(1.06, 0.37, "Rasmus 2015 Table 1", "mnist"),
    "full_1000": Published(0.84, 0.08, "Rasmus 2015 Table 1", "mnist"),
    "full_all": Published(0.57, 0.02, "Rasmus 2015 Table 1", "mnist"),
    "bottom_100": Published(1.09, 0.32, "Rasmus 2015 Table 1, unverified", "mnist"),
    "gamma_100": Published(3.06, 1.44, "Rasmus 2015 Table 1, unverified", "mnist"),
    "baseline_100": Published(21.74, 1.77, "Rasmus 2015 Table 1, unverified", "mnist"),
    "baseline_1000": Published(5.70, 0.20, "Rasmus 2015 Table 1, unverified", "mnist"),
    "baseline_all": Published(0.80, 0.03, "Rasmus 2015 Table 1", "mnist"),
    "amlp_100": Published(1.00, None, "Pezeshki 2016 abstract", "mnist"),
    "conv_small_gamma_100": Published(0.89, 0.50, "Rasmus 2015 Table 2", "mnist"),
    "conv_fc_100": Published(0.99, 0.15, "Rasmus 2015 Table 2, unverified", "mnist"),
    "conv_small_baseline_100": Published(6.43, 0.84, "Rasmus 2015 Table 2, unverified",
                                         "mnist"),
    "conv_large_gamma_4000": Published(20.40, 0.47, "Rasmus 2015 Table 3", "cifar10"),
    "conv_large_baseline_4000": Published(23.33, 0.61, "Rasmus 2015 Table 3, unverified",
                                          "cifar10"),
}


def published_for(preset: str, dataset: str,
                  table: Mapping[str, Published] | None = None) -> Published | None:
    """The figure published for ``preset`` on ``dataset`` (from ``table``, default
    PUBLISHED); None when none is published for that preset on that dataset."""
    found = (PUBLISHED if table is None else table).get(preset)
    return found if found is not None and found.dataset == dataset else None


#: Test error (%) by epoch of an independent implementation of the full ladder, 100 labels,
#: label seed 0, MNIST (../shared/LADDER_SPEC.md): a faithful run lands near it.
LEARNING_CURVES: dict[str, dict[int, float]] = {
    "full_100": {1: 11.9, 3: 5.2, 10: 2.7, 30: 1.6, 50: 1.4, 100: 1.0, 150: 0.96},
}
