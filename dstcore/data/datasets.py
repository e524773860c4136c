"""Datasets by name: locate, verify, subset and batch them.

Resolution order for every dataset: the data roots (config ``data_root``, then the
``DST_DATA_ROOT`` environment variable) holding the upstream files, then the project's
cache folder (``data/`` by default), then a torchvision download into that cache.
Nothing is ever substituted: if a dataset cannot be found, :class:`DstError` says where
it looked and how to supply the files.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from dstcore import DstError
from dstcore.data.subsets import stratified_subset

DATA_ROOT_ENV = "DST_DATA_ROOT"


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset: file format, image shape and normalisation statistics."""

    name: str
    kind: str  # "idx" | "cifar" | "imagenet" | "digits"
    input_shape: tuple[int, int, int]  # (C, H, W) as fed to the model
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    folder: str = ""  # torchvision's folder name (e.g. "MNIST", "cifar-10-batches-py")


# SHA-256 of the *decoded* upstream IDX files (content hashes; independent of gzip settings).
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
IDX_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "idx", (1, 28, 28), 10, (0.1307,), (0.3081,), False, "MNIST"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "idx", (1, 28, 28), 10, (0.2860,), (0.3530,), False, "FashionMNIST"),
    "cifar10": DatasetSpec("cifar10", "cifar", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), True, "cifar-10-batches-py"),
    "cifar100": DatasetSpec("cifar100", "cifar", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), True, "cifar-100-python"),
    "imagenet": DatasetSpec("imagenet", "imagenet", (3, 224, 224), 1000, _IMAGENET_MEAN,
                            _IMAGENET_STD, True, "imagenet"),
    # scikit-learn's bundled 8x8 digits, upsampled to 28x28 so every MNIST-shaped model applies.
    "digits": DatasetSpec("digits", "digits", (1, 28, 28), 10, (0.3054,), (0.3247,), False),
}


@dataclass
class DataBundle:
    """A loaded dataset: train and test splits plus what a model needs to know about them."""

    spec: DatasetSpec
    train: Dataset
    test: Dataset
    num_classes: int
    source: str  # where the files were found (for provenance)
    subset_cache: Path | None = None  # where stratified subsets' indices are kept, if anywhere

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape


class TensorImages(Dataset):
    """Images held in memory as uint8 [N, C, H, W] (or float), normalised per batch on access."""

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], scale: float = 255.0) -> None:
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.scale = scale
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> TensorImages:
        """A copy held on ``device`` (``targets`` stays a host list)."""
        moved = copy.copy(self)
        moved.images, moved.labels = self.images.to(device), self.labels.to(device)
        moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised float32 images [B, C, H, W] and int64 labels [B] for ``index``."""
        x = self.images[index].float().div_(self.scale)
        return (x - self.mean) / self.std, self.labels[index]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])


# --------------------------------------------------------------------------------------
# Locating files


def candidate_roots(data_root: str | os.PathLike | None, cache_dir: str | os.PathLike
                    ) -> list[tuple[str, Path]]:
    """The places searched, in order: config data root, ``$DST_DATA_ROOT``, project cache."""
    roots: list[tuple[str, Path]] = []
    if data_root:
        roots.append(("data_root", Path(data_root).expanduser()))
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        roots.append((f"${DATA_ROOT_ENV}", Path(env).expanduser()))
    roots.append(("cache", Path(cache_dir)))
    return roots


def _idx_dirs(root: Path, spec: DatasetSpec) -> list[Path]:
    return [root / spec.name, root / spec.folder / "raw", root]


def _find_idx_files(spec: DatasetSpec, root: Path) -> dict[str, Path] | None:
    """Map upstream IDX name -> file (raw or .gz) in the first folder under ``root`` holding any.

    Returns None when no folder holds any of the files; raises when a folder holds some but
    not all of them (a missing file is an error, not a reason to look elsewhere).
    """
    names = list(IDX_SHA256[spec.name])
    for folder in _idx_dirs(root, spec):
        found: dict[str, Path] = {}
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(names):
            return found
        if found:
            missing = [str(folder / n) + "[.gz]" for n in names if n not in found]
            raise DstError(f"{spec.name}: missing file {', '.join(missing)} "
                           f"(the other IDX files are in {folder})")
    return None


def read_idx_bytes(path: Path) -> bytes:
    """Decoded bytes of an IDX file, gunzipping ``.gz`` files; errors name the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DstError(f"cannot decode {path}: {err} (truncated or corrupt; replace the file)"
                       ) from err


def parse_idx(data: bytes, path: Path, expect_dims: tuple[int, ...]) -> np.ndarray:
    """Parse IDX ubyte content into an array of shape ``expect_dims``; errors name the file."""
    ndim = len(expect_dims)
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if magic != 0x0800 + ndim:
        raise DstError(f"{path}: bad IDX magic number 0x{max(magic, 0):08x}, expected "
                       f"0x{0x0800 + ndim:08x} (unsigned bytes, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DstError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims != expect_dims:
        raise DstError(f"{path}: IDX shape {dims}, expected {expect_dims}")
    expected_len = header + int(np.prod(dims))
    if len(data) != expected_len:
        raise DstError(f"{path}: {len(data)} bytes, expected {expected_len} for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_split(spec: DatasetSpec, files: dict[str, Path], split: str, verify: bool
                    ) -> tuple[Tensor, Tensor]:
    img_name, lbl_name, n = IDX_SPLITS[split]
    arrays = []
    for name, dims in ((img_name, (n, 28, 28)), (lbl_name, (n,))):
        data = read_idx_bytes(files[name])
        arrays.append(parse_idx(data, files[name], dims))
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != IDX_SHA256[spec.name][name]:
                raise DstError(f"{files[name]}: SHA-256 of decoded content is {digest}, expected "
                               f"{IDX_SHA256[spec.name][name]} (upstream {spec.name} {name})")
    images = torch.from_numpy(arrays[0].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays[1].astype(np.int64))
    if int(labels.max()) >= spec.num_classes:
        raise DstError(f"{files[lbl_name]}: label {int(labels.max())} out of range "
                       f"0..{spec.num_classes - 1}")
    return images, labels


def _not_found(spec: DatasetSpec, searched: list[str], download_error: str | None) -> DstError:
    how = {
        "idx": "put the four upstream IDX files (train-images-idx3-ubyte[.gz], ...) in "
               f"<root>/{spec.name}/ or <root>/",
        "cifar": f"put the extracted python-version archive ({spec.folder}/) in <root>/",
        "imagenet": "put an ImageFolder tree (train/<class>/*.JPEG, val/<class>/*.JPEG) in "
                    "<root>/imagenet/ or <root>/",
    }[spec.kind]
    tail = f"; download failed: {download_error}" if download_error else ""
    return DstError(f"dataset '{spec.name}' not found (searched {', '.join(searched)}{tail}). "
                    f"To supply it, {how} and set data_root or ${DATA_ROOT_ENV} to <root>")


def _search(spec: DatasetSpec, roots: list[tuple[str, Path]]) -> tuple[str, object] | None:
    for label, root in roots:
        if spec.kind == "digits":  # ships with scikit-learn
            return "scikit-learn", None
        if spec.kind == "idx":
            files = _find_idx_files(spec, root)
            if files:
                return f"{label}:{root}", files
        elif spec.kind == "cifar":
            for folder in (root, root / spec.name):
                if (folder / spec.folder).is_dir():
                    return f"{label}:{folder}", folder
        else:
            for folder in (root / "imagenet", root):
                if (folder / "train").is_dir() and (folder / "val").is_dir():
                    return f"{label}:{folder}", folder
    return None


def locate(spec: DatasetSpec, data_root: str | os.PathLike | None, cache_dir: str | os.PathLike,
           download: bool) -> tuple[str, object]:
    """Find ``spec``'s files: return (description of the source, locator for the loader).

    The locator is a ``{name: path}`` dict for IDX datasets and a folder for the others.
    """
    roots = candidate_roots(data_root, cache_dir)
    for label, root in roots[:-1]:
        if not root.is_dir():
            raise DstError(f"{label} {root} is not a directory (set it to a folder holding "
                           f"the {spec.name} files, or unset it)")
    found = _search(spec, roots)
    if found:
        return found
    searched = [str(root) for _, root in roots]
    if not download or spec.kind == "imagenet":
        raise _not_found(spec, searched, None)
    try:
        _download(spec, Path(cache_dir))
    except Exception as err:  # network errors come in many types
        raise _not_found(spec, searched, f"{type(err).__name__}: {err}") from err
    found = _search(spec, roots[-1:])
    if found:
        return found
    raise _not_found(spec, searched, "the downloaded files were not found afterwards")


def _download(spec: DatasetSpec, cache_dir: Path) -> None:
    import torchvision.datasets as tvd

    cache_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "cifar":  # fetch and check the archive only: constructing the class unpickles
        from torchvision.datasets.utils import download_and_extract_archive

        cls = tvd.CIFAR10 if spec.name == "cifar10" else tvd.CIFAR100
        download_and_extract_archive(cls.url, str(cache_dir), filename=cls.filename,
                                     md5=cls.tgz_md5)
        return
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[spec.name]
    cls(root=str(cache_dir), train=True, download=True)


# --------------------------------------------------------------------------------------
# Loading


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name``."""
    if name not in DATASETS:
        raise DstError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, data_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike = "data", download: bool = True,
                 verify: bool = True, train_subset: int | None = None,
                 test_subset: int | None = None, subset_seed: int = 0) -> DataBundle:
    """Locate, verify and load dataset ``name`` with optional stratified, seeded subsets."""
    spec = get_spec(name)
    source, where = locate(spec, data_root, cache_dir, download)
    if spec.kind == "idx":
        train = TensorImages(*_load_idx_split(spec, where, "train", verify), spec.mean, spec.std)
        test = TensorImages(*_load_idx_split(spec, where, "test", verify), spec.mean, spec.std)
        num_classes = spec.num_classes
    elif spec.kind == "digits":
        train, test = _load_digits(spec)
        num_classes = spec.num_classes
    elif spec.kind == "cifar":
        train, test = _load_cifar(spec, where, verify)
        num_classes = spec.num_classes
    else:
        train, test = _load_imagenet(spec, where)
        num_classes = len(train.classes)
        if [c for c in test.classes] != list(train.classes):
            raise DstError(f"{where}: train/ and val/ hold different class folders")
    cache = Path(cache_dir) / "subsets"
    train = stratified_subset(train, train_subset, subset_seed, f"{name} train", cache)
    test = stratified_subset(test, test_subset, subset_seed, f"{name} test", cache)
    return DataBundle(spec, train, test, num_classes, source, cache)


def _load_digits(spec: DatasetSpec) -> tuple[TensorImages, TensorImages]:
    """scikit-learn digits: 1,797 images 8x8 in 0..16, upsampled to 28x28, fixed 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear",
                                             align_corners=False).clamp_(0, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                              stratify=digits.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return (TensorImages(images[tr], labels[tr], spec.mean, spec.std, scale=1.0),
            TensorImages(images[te], labels[te], spec.mean, spec.std, scale=1.0))


def image_transforms(spec: DatasetSpec, train: bool):
    """torchvision transforms: random crop + flip for CIFAR/ImageNet training, none otherwise."""
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if spec.kind == "cifar":
        aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        return T.Compose(aug + norm)
    if train:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] + norm)
    return T.Compose([T.Resize(256), T.CenterCrop(224)] + norm)


class CifarImages(Dataset):
    """CIFAR images ``(N, 32, 32, 3)`` uint8 with integer labels, transformed as PIL images."""

    def __init__(self, data: np.ndarray, targets: list[int], transform) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


# The only globals a CIFAR python-version batch needs: numpy arrays and their dtypes.
_UNPICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other object."""

    def find_class(self, module: str, name: str):
        if (module, name) in _UNPICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR batch file: images ``(N, 32, 32, 3)`` uint8 and their labels."""
    with open(path, "rb") as fh:
        entry = _ArrayUnpickler(fh, encoding="latin1").load()
    labels = entry.get("labels", entry.get("fine_labels"))
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    if labels is None or len(labels) != len(data):
        raise KeyError(f"{path.name} has no labels for its {len(data)} images")
    return data.transpose(0, 2, 3, 1), [int(y) for y in labels]


def _load_cifar(spec: DatasetSpec, folder: Path, verify: bool) -> tuple[Dataset, Dataset]:
    """The python-version archive read without running any code in it; md5-checked with
    ``verify`` (torchvision's file list and hashes)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    base = tvd.CIFAR10 if spec.name == "cifar10" else tvd.CIFAR100

    def split(files: list[list[str]], train: bool) -> CifarImages:
        parts = []
        for name, md5 in files:
            path = folder / spec.folder / name
            if verify and not check_integrity(str(path), md5):
                raise ValueError(f"{name} is missing or its md5 differs")
            parts.append(_read_cifar_batch(path))
        data = np.concatenate([p[0] for p in parts])
        return CifarImages(data, [y for p in parts for y in p[1]], image_transforms(spec, train))

    try:
        return split(base.train_list, True), split(base.test_list, False)
    except (ValueError, OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError,
            AttributeError) as err:
        raise DstError(f"{folder / spec.folder}: not a valid {spec.name} python-version "
                       f"archive ({type(err).__name__}: {err}); set verify: false only for "
                       f"local re-packs") from err


def _load_imagenet(spec: DatasetSpec, folder: Path) -> tuple[Dataset, Dataset]:
    import torchvision.datasets as tvd

    try:
        train = tvd.ImageFolder(str(folder / "train"), transform=image_transforms(spec, True))
        test = tvd.ImageFolder(str(folder / "val"), transform=image_transforms(spec, False))
    except (FileNotFoundError, RuntimeError) as err:
        raise DstError(f"{folder}: not an ImageFolder tree with train/ and val/ ({err})") from err
    return train, test


def describe(bundle: DataBundle) -> dict:
    """Counts and pixel statistics of a loaded dataset (for the prepared-data manifest)."""
    out: dict = {"dataset": bundle.spec.name, "source": bundle.source,
                 "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape),
                 "train_size": len(bundle.train), "test_size": len(bundle.test)}
    base = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
    if isinstance(base, TensorImages):
        idx = torch.as_tensor(bundle.train.indices) if isinstance(bundle.train, Subset) \
            else torch.arange(len(base))
        pixels = base.images[idx].float() / base.scale
        out["train_pixel_mean"] = round(float(pixels.mean()), 4)
        out["train_pixel_std"] = round(float(pixels.std()), 4)
    out["train_class_counts"] = np.bincount(np.asarray(bundle.train.targets),
                                            minlength=bundle.num_classes).tolist()
    return out
