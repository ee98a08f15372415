"""`rlft.extras`: best-of-n sampling and dataset-formatting helpers (TRL's ``trl.extras``)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "BestOfNSampler": ".best_of_n_sampler",
    # TRL 0.7.10 kept these in trl.extras.dataset_formatting only; both paths work here
    "get_formatting_func_from_dataset": ".dataset_formatting",
    "conversations_formatting_function": ".dataset_formatting",
    "instructions_formatting_function": ".dataset_formatting",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
