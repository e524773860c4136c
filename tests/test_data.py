import gzip
import shutil

import numpy as np
import pytest
import torch

from dstcore import DstError
from dstcore.data.datasets import load_dataset, stratified_subset
from dstcore.data.loaders import make_loader
from tests.fakes import fake_cifar, fake_imagenet, fake_mnist, write_idx

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", data_root=data_root, download=False)


def test_real_mnist_matches_published_statistics(mnist):
    assert len(mnist.train) == 60000 and len(mnist.test) == 10000
    assert np.bincount(mnist.train.targets).tolist() == MNIST_COUNTS
    pixels = mnist.train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3081, abs=1e-4)


def test_real_fashion_mnist_is_not_mnist(data_root):
    fashion = load_dataset("fashion-mnist", data_root=data_root, download=False)
    assert np.bincount(fashion.train.targets).tolist() == [6000] * 10
    assert (fashion.train.images.float() / 255).mean().item() == pytest.approx(0.2860, abs=1e-4)


def test_batches_are_normalised(mnist):
    x, y = next(iter(make_loader(mnist.train, 512, shuffle=True, seed=0)))
    assert x.shape == (512, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1


def test_shuffling_depends_only_on_seed(mnist):
    first = [next(iter(make_loader(mnist.train, 64, True, seed=s)))[1] for s in (3, 3, 4)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_stratified_subset_is_seeded_and_balanced(mnist):
    a = stratified_subset(mnist.train, 1000, 0, "train")
    b = stratified_subset(mnist.train, 1000, 0, "train")
    c = stratified_subset(mnist.train, 1000, 1, "train")
    assert a.indices == b.indices != c.indices
    counts = np.bincount(a.targets)
    assert counts.sum() == 1000 and counts.min() >= 88 and counts.max() <= 115


def test_a_kept_subset_is_the_drawn_one_and_a_bad_file_is_drawn_again(mnist, tmp_path,
                                                                       monkeypatch):
    import dstcore.data.subsets as ds

    drawn = stratified_subset(mnist.test, 300, 3, "t")
    kept = stratified_subset(mnist.test, 300, 3, "t", tmp_path)
    (path,) = tmp_path.iterdir()
    assert kept.indices == drawn.indices and np.load(path).tolist() == drawn.indices
    monkeypatch.setattr(ds, "_draw_subset", lambda *a: pytest.fail("drew instead of reading"))
    assert stratified_subset(mnist.test, 300, 3, "t", tmp_path).indices == drawn.indices
    monkeypatch.undo()
    np.save(path, np.arange(299))  # a file that does not fit: drawn again and rewritten
    assert stratified_subset(mnist.test, 300, 3, "t", tmp_path).indices == drawn.indices
    assert np.load(path).tolist() == drawn.indices
    assert len(list(tmp_path.iterdir())) == 1
    other = stratified_subset(mnist.test, 300, 4, "t", tmp_path)  # another seed, another file
    assert other.indices != drawn.indices and len(list(tmp_path.iterdir())) == 2


def test_raw_and_gz_files_are_both_accepted(tmp_path, data_root, no_data_env):
    for path in (data_root / "mnist").glob("*.gz"):
        with gzip.open(path) as src, open(tmp_path / path.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    bundle = load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "cache",
                          download=False)
    assert len(bundle.test) == 10000


def test_not_found_names_dataset_places_and_remedy(tmp_path, no_data_env):
    with pytest.raises(DstError) as err:
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    msg = str(err.value)
    assert "'mnist' not found" in msg and str(tmp_path) in msg and "DST_DATA_ROOT" in msg


def test_no_substitution_of_one_dataset_for_another(tmp_path, data_root, no_data_env):
    shutil.copytree(data_root / "mnist", tmp_path / "mnist")
    with pytest.raises(DstError, match="'fashion-mnist' not found"):
        load_dataset("fashion-mnist", data_root=tmp_path, cache_dir=tmp_path / "c",
                     download=False)


def test_missing_data_root_is_an_error(tmp_path):
    with pytest.raises(DstError, match="is not a directory"):
        load_dataset("mnist", data_root=tmp_path / "nope", download=False)


def test_wrong_checksum_names_the_file(tmp_path, no_data_env):
    fake_mnist(tmp_path / "mnist")
    with pytest.raises(DstError, match=r"train-images-idx3-ubyte.gz: SHA-256 of decoded content"):
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_unverified_fake_loads(tmp_path, no_data_env):
    fake_mnist(tmp_path / "mnist", train=200, test=50)
    with pytest.raises(DstError, match=r"IDX shape \(200, 28, 28\), expected \(60000, 28, 28\)"):
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "c", download=False,
                     verify=False)


def test_truncated_gz_names_the_file(tmp_path, data_root, no_data_env):
    shutil.copytree(data_root / "mnist", tmp_path / "mnist")
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(DstError, match=r"t10k-labels-idx1-ubyte.gz.*truncated or corrupt"):
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_wrong_magic_number_names_the_file(tmp_path, data_root, no_data_env):
    shutil.copytree(data_root / "mnist", tmp_path / "mnist")
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(target, np.zeros(10000, dtype=np.uint8), magic=0x0803, gz=False)
    with pytest.raises(DstError, match=r"t10k-labels-idx1-ubyte: bad IDX magic.*0x00000801"):
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_missing_file_names_it(tmp_path, data_root, no_data_env):
    shutil.copytree(data_root / "mnist", tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DstError, match=r"missing file .*t10k-images-idx3-ubyte\[.gz\]"):
        load_dataset("mnist", data_root=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_digits_offline():
    bundle = load_dataset("digits")
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    x, _ = next(iter(make_loader(bundle.train, 32, shuffle=False)))
    assert x.shape == (32, 1, 28, 28)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_fake_loads_without_verification_and_fails_with_it(tmp_path, classes, no_data_env):
    name = f"cifar{classes}"
    fake_cifar(tmp_path, classes)
    bundle = load_dataset(name, data_root=tmp_path, cache_dir=tmp_path / "c", download=False,
                          verify=False)
    assert bundle.num_classes == classes and len(bundle.test) == 20
    x, y = next(iter(make_loader(bundle.train, 8, shuffle=True)))
    assert x.shape == (8, 3, 32, 32) and y.max() < classes
    with pytest.raises(DstError, match="not a valid"):
        load_dataset(name, data_root=tmp_path, cache_dir=tmp_path / "c", download=False)


def test_imagenet_fake_folder(tmp_path, no_data_env):
    fake_imagenet(tmp_path)
    bundle = load_dataset("imagenet", data_root=tmp_path, cache_dir=tmp_path / "c",
                          train_subset=6)
    assert bundle.num_classes == 3 and len(bundle.train) == 6
    x, _ = next(iter(make_loader(bundle.test, 4, shuffle=False)))
    assert x.shape == (4, 3, 224, 224)


def test_imagenet_is_never_downloaded(tmp_path, no_data_env):
    with pytest.raises(DstError, match="'imagenet' not found.*ImageFolder"):
        load_dataset("imagenet", data_root=tmp_path, cache_dir=tmp_path / "c")


def test_failed_download_is_a_clear_error(tmp_path, no_data_env, monkeypatch):
    import dstcore.data.datasets as data

    def offline(spec, cache_dir):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DstError, match="'cifar10' not found.*download failed: OSError"):
        load_dataset("cifar10", data_root=tmp_path, cache_dir=tmp_path / "c")
