"""Tiny fake image datasets on disk (ImageFolder and Places365 layouts), written with PIL in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("n01440764", "n01443537", "n01484850")  # ImageNet-style folder names (wnids)


def _write_image(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def write_image_folder(
    folder: Path,
    classes: tuple[str, ...] = CLASSES,
    train_per_class: int = 6,
    val_per_class: int = 2,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """``folder/{train,val}/<class>/<i>.JPEG`` (plus one PNG per class, as real folders mix formats): random
    non-square RGB images, so the resize-and-crop transforms have work to do. Returns ``folder``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes:
            for i in range(count):
                suffix = ".png" if i == 0 else ".JPEG"
                _write_image(folder / split / name / f"{i:04d}{suffix}", rng, size)
    return folder


def write_places365(folder: Path, train_per_class: int = 6, val_per_class: int = 2, seed: int = 0) -> Path:
    """The layout torchvision's ``Places365(small=True)`` reads, for 3 categories (its MD5 checks of the text
    files must be patched out: these are not the real lists). Returns ``folder``."""
    rng = np.random.default_rng(seed)
    categories = ("/a/abbey", "/b/bakery/shop", "/c/canyon")
    (folder / "categories_places365.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(categories)))
    train, val = [], []
    for label, category in enumerate(categories):
        for i in range(train_per_class):
            name = f"{category}/{i:08d}.jpg"
            _write_image(folder / "data_256_standard" / name.lstrip("/"), rng, (40, 40))
            train.append(f"{name} {label}\n")
        for i in range(val_per_class):
            name = f"Places365_val_{label * val_per_class + i + 1:08d}.jpg"
            _write_image(folder / "val_256" / name, rng, (40, 40))
            val.append(f"{name} {label}\n")
    (folder / "places365_train_standard.txt").write_text("".join(train))
    (folder / "places365_val.txt").write_text("".join(val))
    return folder
