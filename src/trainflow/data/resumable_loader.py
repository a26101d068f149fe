"""A training DataLoader that a checkpoint can stop and restart inside an epoch.

Lightning saves the state of a train loader that has `state_dict` /
`load_state_dict` with every checkpoint, and loads it back before it asks
the loader for the resumed epoch's batches; it does not skip batches
itself. This loader's state is where the epoch stands: the shuffle's seed,
the epoch, and how many batches of it were handed to training. Restored,
it draws the same permutation and starts at the next batch.

The shuffle is a real one over the whole split: a permutation of all row
indices from `seed + epoch`, torch's `DistributedSampler` (so Lightning
leaves it in place under DDP, and each rank takes its share of the same
permutation). It needs only `len(dataset)`, never the rows, so it works
whatever a dataset's storage.

Batches are counted where training receives them, not where the sampler
yields indices: worker processes fetch indices ahead of training, so the
sampler's own position overstates what was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochShuffle(DistributedSampler):
    """All row indices in a permutation seeded by `seed + epoch`; `start` of them skipped once."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        shared = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if shared else 1,
                         rank=dist.get_rank() if shared else 0, shuffle=True, seed=seed)
        self.start = 0  # indices of this epoch already trained on; consumed by the next pass

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose `shuffle=True` is an `EpochShuffle` that Lightning checkpoints.

    The seed is torch's initial seed (`seed_everything`'s), read without
    drawing from the global generator: a resumed run, whose generator was
    just restored from the checkpoint, must not draw anything the
    uninterrupted run did not. For the same reason the workers' base seed
    comes from the loader's own generator, seeded per epoch.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = False, **kwargs: Any) -> None:
        if shuffle and kwargs.get("sampler") is None:
            kwargs["sampler"] = EpochShuffle(dataset, torch.initial_seed() % 2**62)  # room for `+ epoch`
            kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, **kwargs)
        self._epoch, self._batches = 0, 0  # the pass in progress: its epoch, batches handed out
        self._skip = 0  # batches of the restored epoch to skip at the next pass

    @property
    def shuffle(self) -> EpochShuffle | None:
        return self.sampler if isinstance(self.sampler, EpochShuffle) else None

    # a generator over DataLoader's own iterator (which it wraps to count), not that iterator itself
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        shuffle = self.shuffle
        if shuffle is None or self.batch_size is None:  # nothing to resume: epochs start over
            yield from super().__iter__()
            return
        skip, self._skip = self._skip, 0
        shuffle.start = skip * self.batch_size
        if self.generator is not None:
            self.generator.manual_seed(shuffle.seed + shuffle.epoch)
        self._epoch, self._batches = shuffle.epoch, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where training goes on: batch `batches` of `epoch`.

        A pass that handed out all its batches, or belongs to an earlier
        epoch than the one Lightning has set, goes on at the next epoch's
        first batch; a restored position not yet reached stays as restored.
        """
        shuffle = self.shuffle
        if shuffle is None:
            return {}
        epoch, batches = shuffle.epoch, 0
        if self._skip:
            batches = self._skip
        elif self._epoch == shuffle.epoch:
            epoch, batches = (epoch + 1, 0) if self._batches >= len(self) else (epoch, self._batches)
        return {"seed": int(shuffle.seed), "epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        shuffle = self.shuffle
        if shuffle is None or not state:
            return
        shuffle.seed = int(state["seed"])
        shuffle.set_epoch(int(state["epoch"]))
        self._skip = int(state["batches"])
