"""The batches of a run's steps, as functions of (seed, step, rank): any step's batch, its
masking, its negatives and its dropout can be rebuilt without the steps before it, so a
resumed run trains exactly as an uninterrupted one."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from ..core.errors import ConfigError


def step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1)


def micro_stream(stream: int, micro: int, rank: int, world: int) -> int:
    """Random stream of one forward pass; the first pass of rank 0 keeps the plain stream."""
    return stream + 16 * (micro * world + rank)


class StepBatches(Sampler):
    """Yields this rank's forward passes of steps start..total-1 as lists of (step, micro, index).

    Epoch e is a permutation seeded by (seed, e), so any step's batch can be rebuilt without
    the others. A step's global batch is cut into ``accum`` passes and each pass into
    ``world`` contiguous shares, in rank order, so gathering the shares rebuilds the pass.
    With ``units`` (lists of indices covering 0..n-1 once, see ``data.batch_groups``) the
    permutation is of the units, whose indices stay next to each other.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int, *,
                 rank: int = 0, world: int = 1, accum: int = 1, units: list[list[int]] | None = None):
        if batch_size % (world * accum):
            raise ConfigError(f"batch size {batch_size} is not a multiple of "
                              f"{world} processes x {accum} accumulation steps")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world, self.accum = rank, world, accum
        self.micro = batch_size // (world * accum)
        self.per_epoch = n // batch_size
        self.units = units

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, 1))
                perm, perm_epoch = self._permutation(g), epoch
            batch = perm[k * self.batch_size : (k + 1) * self.batch_size]
            for micro in range(self.accum):
                at = (micro * self.world + self.rank) * self.micro
                yield [(step, micro, i) for i in batch[at : at + self.micro]]

    def _permutation(self, g: torch.Generator) -> list[int]:
        if self.units is None:
            return torch.randperm(self.n, generator=g).tolist()
        return [i for u in torch.randperm(len(self.units), generator=g).tolist() for i in self.units[u]]


class StepItems(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        step, micro, i = key
        return step, micro, self.dataset[i], i


class SeededCollate:
    """Re-seeds the collator's generator from the pass, so masking does not depend on workers."""

    def __init__(self, collate, seed: int, rank: int, world: int):
        self.collate, self.seed, self.rank, self.world = collate, seed, rank, world

    def __call__(self, keyed):
        step, micro = keyed[0][0], keyed[0][1]
        if getattr(self.collate, "generator", None) is not None:
            stream = micro_stream(2, micro, self.rank, self.world)
            self.collate.generator.manual_seed(step_seed(self.seed, step, stream))
        batch = self.collate([item for _, _, item, _ in keyed])
        batch["step"], batch["micro"] = step, micro
        batch["sample_index"] = [i for _, _, _, i in keyed]  # names the samples of a skipped step
        return batch
