"""Reward functions the command-line tests name as module:function; each call is recorded."""

CALLS: list[tuple[list[str], list[float]]] = []


def count_e(texts):
    """The number of letters 'e' in each text, a tenth of a point each."""
    scores = [t.count("e") / 10 for t in texts]
    CALLS.append((list(texts), scores))
    return scores


def wrong_length(texts):
    return [1.0]
