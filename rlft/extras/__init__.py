"""`rlft.extras`: best-of-n sampling and dataset-formatting helpers (TRL's ``trl.extras``)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "BestOfNSampler": ".best_of_n_sampler",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
