"""Batches of a loaded dataset, for training and evaluation, on the CPU or a GPU.

- In-memory datasets (:class:`~dstcore.data.datasets.TensorImages`: MNIST, Fashion-MNIST,
  digits) are batched by indexing, with no per-item collation; on a GPU the whole split (only
  its subset's images, as uint8) is moved there once (:func:`hold_on_device`), so a step makes
  no host-to-device copy.
- Image datasets (CIFAR, ImageNet folders) go through a :class:`torch.utils.data.DataLoader`
  with workers, pinned memory on CUDA and, for training, persistent workers
  (:class:`TrainLoader`). Augmentation draws its randomness from (epoch seed, item index)
  alone (:class:`SeededItems`), so an epoch's batches do not depend on the number of workers,
  on the epochs before or on a resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from dstcore.data.datasets import DataBundle, TensorImages

Batches = Iterable[tuple[Tensor, Tensor]]  # (images [B, C, H, W] float32, labels [B] int64)


def _in_memory(dataset: Dataset) -> tuple[TensorImages, Tensor] | None:
    """(the TensorImages, the indices of ``dataset`` in it) for a TensorImages or a Subset of
    one; None for other datasets."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not isinstance(base, TensorImages):
        return None
    indices = torch.as_tensor(dataset.indices) if isinstance(dataset, Subset) \
        else torch.arange(len(base))
    return base, indices


def hold_on_device(bundle: DataBundle, device: torch.device) -> DataBundle:
    """``bundle`` with its in-memory splits held on ``device`` (a CUDA device; the CPU returns
    ``bundle`` itself). Only a subset's images are moved; image datasets stay on the host."""
    if device.type == "cpu":
        return bundle
    splits = [_moved(split, device) for split in (bundle.train, bundle.test)]
    return DataBundle(bundle.spec, splits[0], splits[1], bundle.num_classes, bundle.source)


def _moved(dataset: Dataset, device: torch.device) -> Dataset:
    found = _in_memory(dataset)
    if found is None:
        return dataset
    base, index = found
    return TensorImages(base.images[index], base.labels[index],
                        tuple(base.mean.flatten().tolist()), tuple(base.std.flatten().tolist()),
                        base.scale).to(device)


class TensorBatchLoader:
    """Batches of a :class:`TensorImages` (or a Subset of one) by indexing, on its device; the
    order (shuffled by ``generator``, a CPU generator) is the same on every device."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None) -> None:
        self.base, self.indices = _in_memory(dataset)
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = order.to(self.base.images.device)
        for start in range(0, len(order), self.batch_size):
            yield self.base.batch(order[start:start + self.batch_size])


def item_seed(epoch_seed: int, index: int) -> int:
    """The seed of item ``index``'s augmentation in the epoch seeded ``epoch_seed``."""
    return (epoch_seed * 1_000_000_007 + index) % (2**63)


class SeededItems(Dataset):
    """``dataset`` indexed by (item index, epoch seed): each item is made with torch's CPU
    generator seeded by :func:`item_seed` (torchvision's transforms draw from it), inside
    :func:`torch.random.fork_rng` so the caller's generator is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(seed, index))
            return self.dataset[index]


class EpochSampler(Sampler):
    """Yields (index, epoch seed) for every item, in an order shuffled by the epoch seed
    (:meth:`set_seed`) or in index order."""

    def __init__(self, size: int, shuffle: bool) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, 0

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.arange(self.size)
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        return ((int(i), self.seed) for i in order)


def _data_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                 pin_memory: bool, persistent: bool) -> DataLoader:
    # The DataLoader draws its workers' base seed from ``generator`` (unused: items are
    # seeded by SeededItems), not from the caller's global generator.
    return DataLoader(SeededItems(dataset), batch_size=batch_size,
                      sampler=EpochSampler(len(dataset), shuffle), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False) -> Batches:
    """One pass of (images [B,C,H,W], labels [B]) batches; the order and augmentation are
    fixed by ``seed``. ``num_workers`` and ``pin_memory`` apply to image datasets."""
    if _in_memory(dataset) is not None:
        return TensorBatchLoader(dataset, batch_size, shuffle, torch.Generator().manual_seed(seed))
    loader = _data_loader(dataset, batch_size, shuffle, num_workers, pin_memory, False)
    loader.sampler.set_seed(seed)
    return loader


class TrainLoader:
    """The training batches of a run, one epoch at a time (:meth:`epoch`). Image datasets
    keep one DataLoader, its workers persistent across epochs."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.loader = None if _in_memory(dataset) is not None else \
            _data_loader(dataset, batch_size, True, num_workers, pin_memory, True)

    def epoch(self, seed: int) -> Batches:
        """The shuffled batches of the epoch seeded ``seed``."""
        if self.loader is None:
            return make_loader(self.dataset, self.batch_size, True, seed)
        self.loader.sampler.set_seed(seed)
        return self.loader


def held_out_slice(bundle: DataBundle, size: int, seed: int) -> tuple[Tensor, Tensor, str]:
    """``size`` training images a run can tune on without the test split: (images [N, C, H, W]
    float32, labels [N] int64, ``held-out`` or ``training``). From the training images the run's
    ``train_subset`` leaves out when there are at least ``size``, else from the training split
    itself; class-stratified with ``seed``; image datasets read with their test transforms."""
    import copy

    from dstcore.data.datasets import image_transforms
    from dstcore.data.subsets import stratified_subset

    train = bundle.train
    base = train.dataset if isinstance(train, Subset) else train
    trained = [int(i) for i in train.indices] if isinstance(train, Subset) else []
    indices, where = trained or list(range(len(base))), "training"
    if trained and len(base) - len(trained) >= size:
        used = set(trained)
        indices, where = [i for i in range(len(base)) if i not in used], "held-out"
    if hasattr(base, "transform"):  # no augmentation on the slice
        base = copy.copy(base)
        base.transform = image_transforms(bundle.spec, train=False)
    pool = Subset(base, indices)
    pool.targets = [base.targets[i] for i in indices]
    chosen = stratified_subset(pool, size, seed, "search slice", bundle.subset_cache)
    if isinstance(chosen, Subset) and chosen is not pool:  # one level: in-memory batches
        chosen = Subset(base, [indices[i] for i in chosen.indices])
    batches = list(make_loader(chosen, 500, shuffle=False))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), where
