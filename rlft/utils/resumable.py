"""A dataloader that knows how many batches it handed out, so a resumed run continues mid-epoch.

`ResumableSampler` draws epoch ``e``'s order from a generator seeded with
``(seed, e)`` only: every process, and every restart, gets the same order without
any random state to save. `ResumableDataLoader` wraps the (accelerate-prepared)
loader, counts the batches it yields, and after `load_state_dict` its next
iteration starts at the first batch not yet handed out.

Iteration semantics are a plain DataLoader's: each ``iter()`` starts a new epoch
(also after a ``break``), except the first one after `load_state_dict`, which
finishes the interrupted epoch.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

#: Mixed into the epoch seed so epoch e of seed s differs from epoch 0 of seed s + e.
_EPOCH_SEED_STRIDE = 1_000_003


class ResumableSampler(torch.utils.data.Sampler):
    """A random (or sequential) order of ``range(n)`` per epoch that can start part-way.

    Args:
        n: number of examples.
        seed: base seed; epoch ``e`` uses ``seed * 1_000_003 + e``.
        shuffle: random order (True) or 0..n-1 (False).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        #: Index into the epoch's order where the next iteration starts (then reset to 0).
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        yield from self.order(self.epoch)[start:]

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader:
    """Wraps a dataloader; counts yielded batches per epoch and resumes from a saved count.

    Args:
        loader: the dataloader to iterate (may be accelerate's prepared loader).
        sampler: the `ResumableSampler` inside ``loader`` (None for loaders without one:
            resuming then skips the handed-out batches by iterating over them).
        samples_per_batch: sampler indices one yielded batch consumes over all
            processes (``batch_size * num_processes``).

    Attributes other than the ones below are read from ``loader`` (``dataset``,
    ``batch_size``, ...). ``len()`` is the number of batches of a full epoch.
    """

    def __init__(self, loader, sampler: Optional[ResumableSampler], samples_per_batch: int):
        self.loader = loader
        self.sampler = sampler
        self.samples_per_batch = int(samples_per_batch)
        #: Epoch of the current (or last) iteration, counted from 0.
        self.epoch = 0
        #: Batches yielded so far in that epoch.
        self.batches = 0
        self._started = False
        self._resuming = False

    def __iter__(self):
        if self._resuming:
            self._resuming = False
        else:
            if self._started:
                self.epoch += 1
            self.batches = 0
        self._started = True
        skip = self.batches
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        elif self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        if self.sampler is not None:
            self.sampler.start = skip * self.samples_per_batch
            skip = 0
        for index, batch in enumerate(self.loader):
            if index < skip:
                continue
            self.batches += 1
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name in ("loader", "sampler"):  # not set yet (during unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "started": self._started}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the next iteration continues the saved epoch after its last handed-out batch."""
        self.epoch = int(state["epoch"])
        self.batches = int(state["batches"])
        self._started = bool(state.get("started", True))
        if self._started and self.batches >= len(self):
            self.epoch, self.batches = self.epoch + 1, 0  # the saved epoch was finished
        self._resuming = self._started
