"""The seeded, resumable batch loader of hf_llpf's data (images here, text dicts in :mod:`hf_llpf.data.text`).

The order of an epoch is fixed by the seed and the epoch, augmentation by the seed, the epoch and the batch:
``stream()`` continues from a position captured by ``state_dict()``, so a resumed run draws exactly the batches
an uninterrupted run would; ``num_shards``/``shard_index`` give each data-parallel process its own slice of
every batch. Normalisation and the CIFAR augmentation run on whole batches (no per-sample Python, no worker
processes: the reference's fresh 8-worker DataLoader per tick was 9x slower than needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from hf_llpf.errors import UnknownNameError


class SeededLoader:
    """Batches ``(inputs, labels)`` from in-memory tensors, in an order fixed by ``seed`` and the epoch.

    Iterating gives one epoch. ``stream()`` gives an endless stream across epochs whose position is
    captured by :meth:`state_dict` and restored by :meth:`load_state_dict`, so a resumed run draws exactly
    the batches an uninterrupted run would have. ``num_shards``/``shard_index`` give each data-parallel
    process its own slice of every batch.
    """

    def __init__(
        self,
        data: Any,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        augment: bool = False,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        drop_last: bool = False,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        self._init_stream(data, batch_size, seed, shuffle, drop_last, num_shards, shard_index)
        self.augment = augment
        c = data.images.shape[1]
        self._mean = torch.tensor(_per_channel(mean, c), dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(_per_channel(std, c), dtype=torch.float32).view(1, c, 1, 1)

    def _init_stream(
        self, data, batch_size: int, seed: int, shuffle: bool, drop_last: bool, num_shards: int, shard_index: int
    ) -> None:
        """The order and position state every loader of this kind shares (images here, text in hf_llpf.data.text)."""
        if batch_size < 1:
            raise UnknownNameError("batch_size", batch_size, ["a positive integer"])
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_shards, self.shard_index = num_shards, shard_index
        self.epoch, self.position = 0, 0  # position: batches already drawn in this epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.data))
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(len(self.data), generator=g)

    def _batch(self, order: torch.Tensor, epoch: int, b: int) -> Any:
        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
        if self.num_shards > 1:
            idx = idx[self.shard_index :: self.num_shards]
        return self._make(idx, epoch, b, augment=self.augment)

    def first_batch(self, n: int = 8) -> Any:
        """The first ``n`` examples as one batch, in data order, unaugmented, without moving the stream."""
        return self._make(torch.arange(min(n, len(self.data))), 0, 0, augment=False)

    def _make(self, idx: torch.Tensor, epoch: int, b: int, *, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.images[idx].float().div_(255.0)  # B, C, H, W in [0, 1]
        if augment:
            # The augmentation's randomness depends only on (seed, epoch, batch): resumable and reproducible.
            g = torch.Generator().manual_seed(_mix(self.seed, epoch, b + 1))
            x = cifar_augment(x, generator=g)
        x = (x - self._mean) / self._std
        return x, self.data.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(self.epoch)
        for b in range(len(self)):
            yield self._batch(order, self.epoch, b)
        self.epoch += 1

    def stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches across epochs, continuing from the current ``(epoch, position)``."""
        while True:
            order = self._order(self.epoch)
            while self.position < len(self):
                b = self.position
                self.position += 1
                yield self._batch(order, self.epoch, b)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """The stream position (enough to resume exactly)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


def cifar_augment(x: torch.Tensor, *, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop with zero padding ``pad`` and horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # B, C, H+2p, W+2p
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).view(b, 1, h, 1)  # B, 1, H, 1
    cols = dx.view(b, 1) + torch.arange(w).view(1, w)  # B, W
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols).view(b, 1, 1, w)  # B, 1, 1, W
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[bi, ci, rows, cols]


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)


def _mix(*values: int) -> int:
    """A stable 63-bit seed from several integers (Python's hash() of ints is stable too, but this is explicit)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


__all__ = ["SeededLoader", "cifar_augment"]
