"""The train loader's shuffle and its checkpointed position (trainflow.data.resumable_loader).

What Lightning does with it (saves `state_dict()` with a checkpoint, calls
`load_state_dict()` on a fresh loader before the resumed epoch, sets the
epoch) is done here by hand; tests/test_resume_mid_epoch.py runs it for real.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from trainflow.data.resumable_loader import EpochShuffle, ResumableDataLoader

ROWS, BATCH = 103, 8  # 13 batches, the last one short


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(ROWS))


def loader(num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(dataset(), shuffle=True, batch_size=BATCH, num_workers=num_workers,
                               persistent_workers=num_workers > 0)


def epoch_batches(source: ResumableDataLoader, epoch: int) -> list[list[int]]:
    source.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    return [batch[0].tolist() for batch in source]


def epoch_order(source: ResumableDataLoader, epoch: int) -> list[int]:
    return [row for batch in epoch_batches(source, epoch) for row in batch]


def test_each_epoch_is_a_seeded_permutation_of_the_whole_split() -> None:
    torch.manual_seed(7)
    first, again = loader(), loader()
    epochs = [epoch_order(first, e) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(ROWS))
    assert len({tuple(order) for order in epochs}) == 3, "every epoch shuffles anew"
    assert epoch_order(again, 1) == epochs[1], "the same seed and epoch: the same order"
    torch.manual_seed(8)
    assert epoch_order(loader(), 1) != epochs[1], "the seed comes from seed_everything's"


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 5, 12])
def test_a_loader_restored_mid_epoch_hands_out_exactly_the_remaining_batches(num_workers: int,
                                                                             stop_after: int) -> None:
    torch.manual_seed(3)
    reference = epoch_batches(loader(), 2)

    torch.manual_seed(3)
    interrupted = loader(num_workers)
    interrupted.sampler.set_epoch(2)
    seen = []
    for batch in interrupted:  # workers fetch ahead: the position counts what was handed out
        seen.append(batch[0].tolist())
        if len(seen) == stop_after:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["batches"] == stop_after

    torch.manual_seed(999)  # a resumed process: its own seed is overridden by the checkpoint's
    resumed = loader(num_workers)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state, "a restored position not yet reached is saved as restored"
    rest = epoch_batches(resumed, 2)
    assert seen + rest == reference
    assert epoch_batches(resumed, 3) == epoch_batches(loader_like(state), 3), "later epochs start whole"


def loader_like(state: dict[str, int]) -> ResumableDataLoader:
    fresh = loader()
    fresh.load_state_dict({**state, "batches": 0})
    return fresh


def test_a_finished_pass_or_a_new_epoch_saves_the_next_epochs_start() -> None:
    torch.manual_seed(1)
    source = loader()
    assert source.state_dict()["epoch"] == 0 and source.state_dict()["batches"] == 0
    epoch_batches(source, 0)
    assert source.state_dict()["epoch"] == 1 and source.state_dict()["batches"] == 0  # during validation
    source.sampler.set_epoch(1)  # the next epoch began; its pass has not
    assert source.state_dict()["epoch"] == 1 and source.state_dict()["batches"] == 0


def test_shuffling_draws_nothing_from_the_global_generator() -> None:
    """A resume restores the global generator right before the loader's first pass: drawing would shift it."""
    torch.manual_seed(5)
    source = loader(num_workers=2)
    before = torch.get_rng_state()
    epoch_batches(source, 0)
    epoch_batches(source, 1)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_sampler_needs_only_the_length() -> None:
    class Sized:
        def __len__(self) -> int:
            return 10

    assert sorted(EpochShuffle(Sized(), seed=4)) == list(range(10))  # type: ignore[arg-type]
