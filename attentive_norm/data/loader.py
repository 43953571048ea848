"""Data loaders for training and evaluation: seeded per-sample augmentation and counted skips.

Every sample is augmented with a random stream seeded by ``(seed, epoch, index)``. The augmentation
of an image therefore does not depend on the number of processes or loader workers, nor on where a
run was interrupted and resumed, and the global random state is left alone. A sample that cannot be
loaded (a broken image met mid-epoch) becomes a :class:`Skipped` marker that the collate function
drops and reports, so a single bad file costs one image, not the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import transforms
from .digits import digits_datasets
from .folder import DataError, image_folder_splits
from .sampler import ShardSampler
from .seeds import mix_seed

if TYPE_CHECKING:
    from ..engine.config import TrainConfig


class ImageSource(Protocol):
    """What the loaders need from a dataset: ``load(i) -> (image, label)``, a description, classes."""

    classes: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, int]: ...

    def describe(self, index: int) -> str: ...


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be loaded: what it was and why."""

    what: str
    reason: str


class Augmented(Dataset):
    """``source`` (optionally restricted to ``indices``) with ``transform`` applied under a per-sample seed.

    Items are addressed as ``(epoch, index)``, the keys :class:`ShardSampler` yields.
    """

    def __init__(
        self, source: ImageSource, transform: Callable, seed: int, indices: Sequence[int] | None = None
    ) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int] | Skipped:
        epoch, index = key
        index = self.indices[index] if self.indices is not None else index
        try:
            image, label = self.source.load(index)
        except Exception as exc:  # any decoding failure of one file: skip it, count it
            return Skipped(self.source.describe(index), f"{type(exc).__name__}: {exc}")
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            return self.transform(image), label


def collate(batch: list[tuple[Tensor, int] | Skipped]) -> tuple[Tensor, Tensor, list[Skipped]]:
    """Stack the loaded samples; return the skipped ones beside them."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped


@dataclass
class Loaders:
    """The training and validation loaders of a run, the training sampler and the class names."""

    train: DataLoader
    val: DataLoader
    train_sampler: ShardSampler
    classes: list[str]


def sources(data: str | None, image_size: int) -> tuple[ImageSource, ImageSource]:
    """The training and validation sets: ImageFolder under ``data``, or the bundled digits."""
    if data is None:
        return digits_datasets(image_size)
    return image_folder_splits(data)


def train_transform(data: str | None, image_size: int, interpolation: str) -> Callable:
    if data is None:
        return transforms.digits_train(image_size)
    return transforms.imagenet_train(image_size, interpolation)


def eval_transform(data: str | None, image_size: int, resize: int | None, interpolation: str) -> Callable:
    if data is None:
        return transforms.digits_eval()
    return transforms.imagenet_eval(image_size, resize, interpolation)


def build_loaders(cfg: TrainConfig, world_size: int, rank: int, cpus: int, pin_memory: bool) -> Loaders:
    """The loaders of the training run ``cfg`` for process ``rank`` of ``world_size``."""
    if cfg.batch_size % world_size:
        raise DataError(f"batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    train_source, val_source = sources(cfg.data, cfg.image_size)
    train_idx = val_idx = None
    if cfg.subset is not None:
        pick = torch.Generator().manual_seed(cfg.seed if cfg.subset_seed is None else cfg.subset_seed)
        train_idx = torch.randperm(len(train_source), generator=pick)[: cfg.subset].tolist()
        val_idx = torch.randperm(len(val_source), generator=pick)[: cfg.subset].tolist()
    train_set = Augmented(
        train_source, train_transform(cfg.data, cfg.image_size, cfg.interpolation), cfg.seed, train_idx
    )
    val_tf = eval_transform(cfg.data, cfg.image_size, cfg.eval_resize, cfg.interpolation)
    val_set = Augmented(val_source, val_tf, cfg.seed, val_idx)
    if len(train_set) < cfg.batch_size:
        raise DataError(
            f"the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size or add data"
        )
    per_process = cfg.batch_size // world_size
    workers = cfg.workers if cfg.workers is not None else (0 if cfg.data is None else min(8, cpus))
    sampler = ShardSampler(len(train_set), per_process, world_size=world_size, rank=rank, seed=cfg.seed)
    return Loaders(
        train=make_loader(train_set, sampler, workers, pin_memory, cfg.seed),
        val=eval_loader(val_set, per_process, workers, world_size, rank, pin_memory),
        train_sampler=sampler,
        classes=list(train_source.classes),
    )


def eval_loader(
    dataset: Augmented,
    batch_size: int,
    workers: int,
    world_size: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Every image once, in order, this process's share."""
    sampler = ShardSampler(
        len(dataset), batch_size, world_size=world_size, rank=rank, shuffle=False, drop_last=False
    )
    return make_loader(dataset, sampler, workers, pin_memory, seed=0)


def make_loader(
    dataset: Dataset, sampler: ShardSampler, workers: int, pin_memory: bool, seed: int
) -> DataLoader:
    # An own generator: creating the loader's iterator must not draw from the global random state,
    # which a resumed run restores exactly.
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=sampler.drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
