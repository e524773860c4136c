"""Small fake datasets in upstream formats, for code paths whose real data is not available."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file (gzip-compressed when ``gz``)."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def fake_mnist(folder: Path, train: int = 60000, test: int = 10000, seed: int = 0) -> Path:
    """Four IDX files with upstream names and random content (right shape, wrong hashes)."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return folder


def fake_cifar(root: Path, classes: int = 10, per_batch: int = 20, seed: int = 0) -> Path:
    """A python-version CIFAR-10/100 folder with tiny random batches."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, files, key, meta = "cifar-10-batches-py", [f"data_batch_{i}" for i in
                                                            range(1, 6)] + ["test_batch"], \
            "labels", ("batches.meta", "label_names")
    else:
        folder, files, key, meta = "cifar-100-python", ["train", "test"], "fine_labels", \
            ("meta", "fine_label_names")
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 key: rng.integers(0, classes, per_batch).tolist()}
        (out / name).write_bytes(pickle.dumps(batch))
    (out / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"c{i}" for i in range(classes)]}))
    return root


def fake_imagenet(root: Path, classes: int = 3, per_class: int = 4, size: int = 40,
                  seed: int = 0) -> Path:
    """An ImageFolder tree root/imagenet/{train,val}/<wnid>/*.JPEG with random images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", format="JPEG")
    return root
