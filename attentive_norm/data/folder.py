"""ImageFolder data (``root/train/<class>/<image>``, ``root/val/<class>/<image>``), checked up front.

Layout problems (missing or empty folders, a class folder without images, validation classes that
the training set lacks) raise :class:`DataError` with the fix before anything is trained. Small
datasets are also decoded-header checked up front and unreadable files left out with a warning; in
large ones an unreadable file is met while loading and skipped (the loader counts it).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from .images import open_rgb

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
VERIFY_UP_TO = 20_000
"""Datasets with at most this many images have every file opened and verified before training."""

LAYOUT = "expected ROOT/train/<class>/<images> and ROOT/val/<class>/<images>"


class DataError(ValueError):
    """The data cannot be used as given; the message says what is wrong and where."""


class ImageFolderData(Dataset):
    """The images under ``root/<class>/``, labelled by the class folders' sorted names (or ``classes``)."""

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None) -> None:
        self.root = Path(root)
        found = _class_folders(self.root)
        if classes is not None and (extra := sorted(set(found) - set(classes))):
            raise DataError(
                f"{self.root}: class folders not in the training set: {_few(extra)} "
                "(train/ and val/ must hold the same class folders)"
            )
        self.classes = classes if classes is not None else found
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for name in found:
            files = _images_in(self.root / name)
            if not files:
                empty.append(name)
            self.samples += [(f, index[name]) for f in files]
        if empty:
            raise DataError(
                f"{self.root}: class folders without images: {_few(empty)} "
                f"(image files end in {', '.join(IMAGE_EXTENSIONS)}); remove the folders or add images"
            )
        if len(self.samples) <= VERIFY_UP_TO:
            self._drop_unreadable(found)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return open_rgb(path), label

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def _drop_unreadable(self, folders: list[str]) -> None:
        bad = {path for path, _ in self.samples if not _readable(path)}
        if not bad:
            return
        self.samples = [s for s in self.samples if s[0] not in bad]
        warnings.warn(
            f"{self.root}: skipping {len(bad)} unreadable images: {_few(sorted(bad))}", stacklevel=3
        )
        present = {self.classes[label] for _, label in self.samples}
        if missing := [name for name in folders if name not in present]:
            raise DataError(f"{self.root}: class folders without readable images: {_few(missing)}")


def image_folder_splits(root: str | os.PathLike) -> tuple[ImageFolderData, ImageFolderData]:
    """The training and validation sets of an ImageFolder root, sharing the training set's classes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist ({LAYOUT})")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"data folder {root} has no {split}/ folder ({LAYOUT})")
    train = ImageFolderData(root / "train")
    return train, ImageFolderData(root / "val", classes=train.classes)


def eval_folder(root: str | os.PathLike, classes: list[str] | None = None) -> ImageFolderData:
    """An evaluation set: ``root/val`` if it exists, else ``root`` itself as the class-folder root."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    return ImageFolderData(root / "val" if (root / "val").is_dir() else root, classes=classes)


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder ({LAYOUT})")
    names = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise DataError(f"{root} has no class folders ({LAYOUT})")
    return names


def _images_in(folder: Path) -> list[str]:
    files = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        files += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # PIL raises many types for damaged files
        return False
    return True


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
