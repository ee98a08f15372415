"""Prompts, preference pairs and the train / held-out split of the sentiment demo.

The split is by film: every snippet of a held-out film is held out, so neither the policy nor
the reward model ever sees text about the films whose prompts judge them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .assets import Snippet

#: Made-up short reviews for the smoke test on the tiny offline model (no real assets needed).
TINY_REVIEWS = [
    ("a warm, funny and moving film with a wonderful cast", True),
    ("one of the best movies of the year, simply delightful", True),
    ("a charming and clever story that is a joy to watch", True),
    ("beautifully made, with great performances all round", True),
    ("the director delivers a brilliant and touching drama", True),
    ("smart, lovely and full of life, a real pleasure", True),
    ("an excellent thriller, tense and superbly acted", True),
    ("a gorgeous film that will make you laugh and cry", True),
    ("fresh, bold and entertaining from start to finish", True),
    ("a great family movie with heart and humour", True),
    ("a dull, boring mess with nothing to say", False),
    ("the worst film of the year, painfully stupid", False),
    ("a tedious and lifeless story that drags on forever", False),
    ("badly written, badly acted and badly directed", False),
    ("an ugly, pointless sequel that wastes its cast", False),
    ("awful jokes, weak plot and a terrible ending", False),
    ("a confused and tiresome drama that never works", False),
    ("so bland and forgettable that it hurts to watch", False),
    ("a cheap, lazy thriller without a single surprise", False),
    ("the script is a disaster and the acting is worse", False),
]


def tiny_snippets(copies: int = 3) -> list[Snippet]:
    """The made-up reviews as snippets of fake films (two films per pair of lines)."""
    rows = []
    for c in range(copies):
        for i, (text, fresh) in enumerate(TINY_REVIEWS):
            rows.append(Snippet(text, fresh, f"film {(i % 10) + 10 * c}"))
    return rows


@dataclass
class DemoData:
    """Train / held-out prompts and reward-model pairs."""

    train_prompts: list[str]
    heldout_prompts: list[str]
    train_pairs: list[tuple[str, str]]  # (fresh, rotten) about the same film
    heldout_pairs: list[tuple[str, str]]
    heldout_snippets: list[Snippet]


def prompt_of(text: str, rng: random.Random, min_words: int, max_words: int) -> str:
    """The first few words of a snippet: the start of a review the policy must continue."""
    words = text.split()
    n = min(len(words) - 1, rng.randint(min_words, max_words))
    return " ".join(words[: max(n, 1)])


def split_films(snippets: list[Snippet], heldout_fraction: float, seed: int) -> tuple[list[Snippet], list[Snippet]]:
    films = sorted({s.movie for s in snippets})
    rng = random.Random(seed)
    rng.shuffle(films)
    n_held = max(1, int(round(len(films) * heldout_fraction)))
    held = set(films[:n_held])
    return [s for s in snippets if s.movie not in held], [s for s in snippets if s.movie in held]


def preference_pairs(snippets: list[Snippet], rng: random.Random, max_pairs: int) -> list[tuple[str, str]]:
    """(fresh, rotten) snippet pairs about the same film, at most ``max_pairs``, shuffled."""
    by_film: dict[str, tuple[list[str], list[str]]] = {}
    for s in snippets:
        fresh, rotten = by_film.setdefault(s.movie, ([], []))
        (fresh if s.fresh else rotten).append(s.text)
    pairs = []
    for film in sorted(by_film):
        fresh, rotten = by_film[film]
        rng.shuffle(fresh)
        rng.shuffle(rotten)
        pairs.extend(zip(fresh, rotten))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def build_data(
    snippets: list[Snippet],
    *,
    n_heldout_prompts: int,
    max_train_prompts: int,
    max_train_pairs: int,
    max_heldout_pairs: int,
    prompt_words: tuple[int, int],
    heldout_fraction: float = 0.15,
    seed: int = 0,
) -> DemoData:
    if not snippets:
        raise ValueError("build_data: no snippets.")
    train, held = split_films(snippets, heldout_fraction, seed)
    rng = random.Random(seed + 1)
    lo, hi = prompt_words
    if not 1 <= lo <= hi:
        raise ValueError(f"prompt_words must satisfy 1 <= min <= max, got {prompt_words}.")
    held_sample = rng.sample(held, min(n_heldout_prompts, len(held)))
    if len(held_sample) < n_heldout_prompts:
        # tiny data: cycle the held-out snippets to reach the requested number of prompts
        held_sample = [held[i % len(held)] for i in range(n_heldout_prompts)]
    train_sample = rng.sample(train, min(max_train_prompts, len(train)))
    return DemoData(
        train_prompts=[prompt_of(s.text, rng, lo, hi) for s in train_sample],
        heldout_prompts=[prompt_of(s.text, rng, lo, hi) for s in held_sample],
        train_pairs=preference_pairs(train, rng, max_train_pairs),
        heldout_pairs=preference_pairs(held, rng, max_heldout_pairs),
        heldout_snippets=held,
    )
