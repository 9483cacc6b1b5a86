"""Tests of learned_opt.tasks.datasets: the idx parser, the loaders, splits,
normalisation, caching and the download helper (offline, via file:// URLs)."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from learned_opt.tasks import DATASETS, clear_cache, datasets, download, make_dataset, read_idx

SHARED = Path("/work/shared/data")
IMAGES, LABELS = datasets.IMAGES_MAGIC, datasets.LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The idx encoding of a uint8 array (magic, big-endian sizes, data) - written independently of the parser."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_set(folder: Path, train_images, train_labels, test_images, test_labels, gz=(True, False, True, False)):
    """The four files of an idx dataset, each gzip-compressed or plain as ``gz`` says."""
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    arrays = [(train_images, IMAGES), (train_labels, LABELS), (test_images, IMAGES), (test_labels, LABELS)]
    for stem, (array, magic), zipped in zip(stems, arrays, gz):
        write(folder / (stem + (".gz" if zipped else "")), idx_bytes(array, magic))


def tiny_set(folder: Path, **kwargs):
    """6 train images of value 10 or 20 (label 0 or 1) and 2 test images of value 200 (label 9)."""
    train = np.repeat(np.array([10, 20, 10, 20, 10, 20], np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    test = np.full((2, 28, 28), 200, np.uint8)
    write_set(folder, train, np.array([0, 1, 0, 1, 0, 1]), test, np.array([9, 9]), **kwargs)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# --------------------------------------------------------------------------- idx parser


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_valid_files(tmp_path, suffix):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 3])
    got_images = read_idx(write(tmp_path / f"img{suffix}", idx_bytes(images, IMAGES)), IMAGES)
    got_labels = read_idx(write(tmp_path / f"lab{suffix}", idx_bytes(labels, LABELS)), LABELS)
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("corrupt,match", [
    (lambda b: b[:-5], r"truncated; the header gives dimensions \(2, 28, 28\) = 1568 data bytes, the file holds 1563"),
    (lambda b: b + b"\x00", r"has trailing bytes"),
    (lambda b: b[:10], r"truncated header"),
    (lambda b: b[:2], r"too short for an idx header"),
    (lambda b: struct.pack(">I", LABELS) + b[4:], r"wrong magic number 2049; expected 2051"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], r"wrong magic number 3331; expected 2051"),
])
def test_read_idx_rejects_bad_files_naming_them(tmp_path, suffix, corrupt, match):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8), IMAGES)
    path = write(tmp_path / f"bad-images{suffix}", corrupt(good))
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path, IMAGES)
    assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((50,), np.uint8), LABELS))
    path = tmp_path / "labels.gz"
    path.write_bytes(data[:-12])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(path, LABELS)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- idx datasets


def test_idx_dataset_loads_mixed_plain_and_gz_files(tmp_path):
    tiny_set(tmp_path / "mnist")
    data = make_dataset("mnist", root=tmp_path, normalize="none")
    assert data.x_train.shape == (6, 784) and data.x_test.shape == (2, 784)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == [0, 1, 0, 1, 0, 1] and data.y_test.tolist() == [9, 9]
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.num_features == 784
    assert data.x_test.unique().tolist() == [200.0]


def test_normalisation_statistics_come_from_the_train_split(tmp_path):
    tiny_set(tmp_path / "fashion-mnist")
    raw_train = np.repeat([10.0, 20.0, 10.0, 20.0, 10.0, 20.0], 784)
    mean, std = raw_train.mean(), raw_train.std(ddof=1)  # 15 and about 5
    data = make_dataset("fashion_mnist", root=tmp_path)  # "global" by default
    assert data.mean.item() == pytest.approx(mean) and data.std.item() == pytest.approx(std)
    assert data.x_train.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert data.x_test.unique().item() == pytest.approx((200 - mean) / std, rel=1e-6)  # not from test stats
    per_feature = make_dataset("fashion_mnist", root=tmp_path, normalize="feature")
    assert per_feature.mean.shape == (784,) and per_feature.mean.eq(15).all()
    assert per_feature.x_test[0, 0].item() == pytest.approx((200 - 15) / np.std([10, 20] * 3, ddof=1), rel=1e-6)


def test_feature_normalisation_leaves_constant_features_centred():
    data = make_dataset("digits", normalize="feature")
    raw = make_dataset("digits", normalize="none")
    constant = raw.x_train.std(0) == 0  # e.g. the always-blank corner pixel
    assert constant.any()
    assert torch.equal(data.std[constant], torch.ones(int(constant.sum())))
    assert torch.allclose(data.x_train.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(data.x_train.std(0)[~constant], torch.ones(int((~constant).sum())), atol=1e-5)


def test_root_may_be_the_dataset_folder_or_come_from_the_environment(tmp_path, monkeypatch):
    tiny_set(tmp_path / "mnist")
    assert make_dataset("mnist", root=tmp_path / "mnist").x_train.shape == (6, 784)
    monkeypatch.setenv("LEARNED_OPT_DATA", str(tmp_path))
    assert make_dataset("mnist").x_train.shape == (6, 784)
    with pytest.raises(FileNotFoundError):  # the mnist folder is not mistaken for fashion-mnist
        make_dataset("fashion_mnist", root=tmp_path / "mnist")


def test_missing_files_raise_file_not_found_naming_every_path(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        make_dataset("fashion_mnist", root=root)
    message = str(info.value)
    for stem in datasets.IDX_FILES:
        assert str(root / "fashion-mnist" / stem) in message
        assert str(root / "fashion-mnist" / f"{stem}.gz") in message
    assert "download('fashion_mnist'" in message and "LEARNED_OPT_DATA" in message


def test_partial_set_is_reported_missing(tmp_path):
    tiny_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        make_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((3, 28, 28)), np.zeros(2), r"holds 3 images but .* holds 2 labels"),
    (np.zeros((2, 8, 8)), np.zeros(2), r"images are 8x8; expected 28x28"),
    (np.zeros((2, 28, 28)), np.array([1, 10]), r"label 10 outside 0..9"),
])
def test_inconsistent_idx_sets_raise_value_error(tmp_path, images, labels, match):
    write_set(tmp_path / "mnist", images, labels, np.zeros((1, 28, 28)), np.zeros(1))
    with pytest.raises(ValueError, match=match):
        make_dataset("mnist", root=tmp_path)


# --------------------------------------------------------------------------- bundled datasets


def test_digits_split_is_seeded_and_disjoint():
    a = make_dataset("digits", normalize="none")
    assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64) and a.input_shape == (1, 8, 8)
    clear_cache()
    b = make_dataset("digits", normalize="none")
    assert a is not b and torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = make_dataset("digits", normalize="none", seed=1)
    assert not torch.equal(a.y_train, c.y_train)
    third = make_dataset("digits", normalize="none", test_fraction=1 / 3)
    assert len(third.y_test) == 599
    # the two splits partition the data set (oracle: sklearn)
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    rows = sorted(map(tuple, np.concatenate([a.x_train.numpy(), a.x_test.numpy()]).tolist()))
    assert rows == sorted(map(tuple, x.astype(np.float32).tolist()))
    assert np.bincount(torch.cat([a.y_train, a.y_test]).numpy()).tolist() == np.bincount(y).tolist()


def test_digits_global_normalisation_uses_train_only():
    data = make_dataset("digits")
    assert data.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data.x_train.std().item() == pytest.approx(1.0, abs=1e-5)
    assert abs(data.x_test.mean().item()) > 1e-4  # the test split has its own, different statistics
    raw = make_dataset("digits", normalize="none")
    assert torch.allclose(data.x_test, (raw.x_test - raw.x_train.mean()) / raw.x_train.std(), atol=1e-5)


def test_mnist5k():
    data = make_dataset("mnist5k")
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert data.input_shape == (1, 28, 28)
    assert set(data.y_train.unique().tolist()) == set(range(10)) == set(data.y_test.unique().tolist())


def test_mnist1d_is_generated_offline_deterministically_without_touching_global_rngs():
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = make_dataset("mnist1d", num_samples=500)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert data.x_train.shape == (400, 40) and data.x_test.shape == (100, 40) and data.input_shape == (40,)
    assert set(data.y_train.unique().tolist()) == set(range(10))
    clear_cache()
    assert torch.equal(make_dataset("mnist1d", num_samples=500).x_train, data.x_train)
    other = make_dataset("mnist1d", num_samples=500, generation_seed=1)
    assert not torch.equal(other.x_train, data.x_train)
    with pytest.raises(ValueError, match="num_samples=5 is not allowed; allowed: an integer >= 10"):
        make_dataset("mnist1d", num_samples=5)


def test_datasets_are_cached_per_arguments():
    assert make_dataset("digits") is make_dataset("digits", device="cpu", seed=0)
    assert make_dataset("digits") is not make_dataset("digits", seed=2)
    assert make_dataset("mnist1d", num_samples=100) is make_dataset("mnist1d", num_samples=100)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="cifar10"), r"dataset='cifar10' is not allowed; allowed: digits, mnist5k, mnist1d, mnist, fashion_mnist"),
    (dict(name="digits", normalize="zca"), r"normalization='zca' is not allowed; allowed: global, feature, none"),
    (dict(name="digits", test_fraction=1.5), r"test_fraction=1.5 is not allowed; allowed: a finite number in \[0.0, 1.0\)"),
    (dict(name="digits", test_fraction=0.0), r"test_fraction=0.0 leaves 0 of 1797 examples"),
    (dict(name="digits", seed="0"), r"seed='0' is not allowed; allowed: an integer"),
])
def test_bad_dataset_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(**kwargs)


def test_dataset_registry():
    assert list(DATASETS) == ["digits", "mnist5k", "mnist1d", "mnist", "fashion_mnist", "mnist5k_8x8", "fashion_8x8"]


# --------------------------------------------------------------------------- download


def fake_server(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of the four gzip files of a tiny set, and their MD5s."""
    server = tmp_path / "server"
    tiny_set(server, gz=(True,) * 4)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in server.iterdir()}
    return server, md5


def test_download_verifies_checksums_and_installs_files(tmp_path, monkeypatch):
    server, md5 = fake_server(tmp_path)
    monkeypatch.setitem(datasets.IDX_SETS, "mnist", dataclasses.replace(datasets.IDX_SETS["mnist"], md5=md5))
    target = download("mnist", tmp_path / "root", base_url=server.as_uri())
    assert target == tmp_path / "root" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(md5)  # no temp files left
    assert make_dataset("mnist", root=tmp_path / "root").x_train.shape == (6, 784)
    # files already present with the right checksum are kept; a corrupted one is fetched again
    inode = (target / "train-labels-idx1-ubyte.gz").stat().st_ino  # a rename would bring a new inode
    (target / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    download("mnist", tmp_path / "root", base_url=server.as_uri() + "/")
    assert (target / "train-labels-idx1-ubyte.gz").stat().st_ino == inode
    refetched = (target / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert hashlib.md5(refetched).hexdigest() == md5["t10k-labels-idx1-ubyte.gz"]


def test_download_checksum_mismatch_raises_and_deletes_the_download(tmp_path):
    server, _ = fake_server(tmp_path)  # files whose MD5 differs from the published MNIST ones
    mismatch = r"checksum mismatch for file://.*/train-images-idx3-ubyte.gz: MD5 [0-9a-f]{32}, expected f68b3c2d"
    with pytest.raises(ValueError, match=mismatch):
        download("mnist", tmp_path / "root", base_url=server.as_uri())
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_download_unreachable_source_raises_os_error(tmp_path):
    with pytest.raises(OSError, match="could not download train-images-idx3-ubyte.gz"):
        download("fashion_mnist", tmp_path / "root", base_url=(tmp_path / "empty").as_uri())
    assert list((tmp_path / "root" / "fashion-mnist").iterdir()) == []
    with pytest.raises(ValueError, match=r"dataset='digits' is not allowed; allowed: mnist, fashion_mnist"):
        download("digits", tmp_path)


# --------------------------------------------------------------------------- real files (skipped when absent)

needs_shared = pytest.mark.skipif(not (SHARED / "mnist").is_dir() or not (SHARED / "fashion-mnist").is_dir(),
                                  reason=f"real MNIST files not at {SHARED}")


@needs_shared
@pytest.mark.parametrize("name,subdir", [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")])
def test_real_idx_datasets(name, subdir):
    data = make_dataset(name, root=SHARED)
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.y_train.min() >= 0 and data.y_train.max() <= 9
    assert torch.bincount(data.y_test).tolist() == ([1000] * 10 if name == "fashion_mnist" else
                                                     [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert data.x_train.mean().item() == pytest.approx(0.0, abs=1e-4)
    # the published checksums in the code are those of the shared copies
    published = dict(line.split()[::-1] for line in (SHARED / subdir / "MD5SUMS").read_text().splitlines())
    assert datasets.IDX_SETS[name].md5 == published


@needs_shared
def test_download_from_a_local_mirror_with_the_real_checksums(tmp_path):
    target = download("mnist", tmp_path, base_url=(SHARED / "mnist").as_uri())
    assert sorted(p.name for p in target.iterdir()) == sorted(datasets.IDX_SETS["mnist"].md5)
    assert make_dataset("mnist", root=tmp_path).y_test.shape == (10000,)
