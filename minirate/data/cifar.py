"""CIFAR-10 / CIFAR-100 from the standard python-pickle layout, with a checked download.

Layouts read (the folders inside the official archives):

    data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    data_dir/cifar-100-python/{train, test, meta}

Each data file is a pickled dict with bytes keys: b'data' is uint8 (N, 3072), one image per row
in CHW order (1024 red, then 1024 green, then 1024 blue bytes); the labels are b'labels'
(CIFAR-10) or b'fine_labels' (CIFAR-100). `load_cifar` returns images as uint8 (N, 32, 32, 3)
(HWC), the layout the augmentations and Pillow work in.

`cifar10-sample` is a small real sample that ships inside the package (cifar10_sample.npz beside
this file): 1,000 training and 200 test images of the official CIFAR-10 batches, 100 and 20 per
class, the original pixels and labels. It needs no --data-dir and no network, so a fresh clone
can train and test offline; accuracy on it is comparable only with other runs on it.

Every problem with the files is a `DatasetError` whose message is one line naming the path.
"""
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np


class DatasetError(Exception):
    """A data set is missing, cannot be downloaded, or its files are malformed."""


# Everything that differs between the two data sets.
SPECS = {
    "cifar10": dict(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": dict(
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}

# The bundled sample: not a download, a file of the package (normalised like CIFAR-10).
SAMPLE = "cifar10-sample"
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_sample.npz")
SPECS[SAMPLE] = dict(title="CIFAR-10 sample (bundled)", num_classes=10, bundled=SAMPLE_PATH)

IMAGE_SIZE = 32
ROW_LENGTH = 3 * IMAGE_SIZE * IMAGE_SIZE  # 3072 bytes per image


# ----------------------------------------------------------------------------------------------
# Loading


def load_cifar(name, data_dir, download=True, url=None, md5=None, timeout=60.0, progress=False):
    """Load CIFAR-10 or CIFAR-100, downloading the official archive if it is missing.

    Args:
        name: 'cifar10', 'cifar100' or 'cifar10-sample' (bundled; data_dir and download unused).
        data_dir: folder that holds (or will hold) 'cifar-10-batches-py' / 'cifar-100-python'.
        download: fetch the archive when the folder is missing; otherwise raise.
        url, md5: override the archive address and its expected MD5 (defaults: the official ones).
        timeout: seconds for the network connection and each read.
        progress: show the download's progress (stderr).

    Returns:
        x_train: uint8 (N_train, 32, 32, 3), y_train: int64 (N_train,),
        x_test: uint8 (N_test, 32, 32, 3), y_test: int64 (N_test,),
        classes: list of class names (str), len(classes) = number of classes.

    The class names come from the meta file; labels must lie in [0, len(classes)).
    """
    if name not in SPECS:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(SPECS)}")
    spec = SPECS[name]
    if "bundled" in spec:
        return load_bundled_sample(spec["bundled"])
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DatasetError(f"--data-dir {data_dir} is a file, not a folder")
    root = os.path.join(data_dir, spec["folder"])
    if not os.path.isdir(root):
        hint = (f"place the extracted '{spec['folder']}' folder there, or train offline on the "
                f"bundled sample with --dataset {SAMPLE}")
        if not download:
            raise DatasetError(f"{spec['title']} not found at {root} (download disabled); {hint}")
        try:
            download_and_extract(url or spec["url"], md5 or spec["md5"], data_dir, spec["folder"],
                                 timeout=timeout, progress=progress)
        except DatasetError as e:
            raise DatasetError(f"{spec['title']} not found at {root} and could not be downloaded "
                               f"({e}); {hint}") from None
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"{root} is not readable (permission denied)")

    meta_path = os.path.join(root, spec["meta_file"])
    meta = _read_pickle(meta_path)
    names = _require_key(meta, spec["names_key"], meta_path)
    if not isinstance(names, (list, tuple)) or len(names) == 0:
        raise DatasetError(f"{meta_path}: {spec['names_key']!r} should be a non-empty list of "
                           f"class names")
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]

    x_train, y_train = _read_split(root, spec["train_files"], spec["label_key"], len(classes))
    x_test, y_test = _read_split(root, spec["test_files"], spec["label_key"], len(classes))
    return x_train, y_train, x_test, y_test, classes


def load_bundled_sample(path=SAMPLE_PATH):
    """The bundled CIFAR-10 sample, in `load_cifar`'s return format."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test",
                                                                "y_test"))
            classes = [str(c) for c in f["classes"]]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"bundled sample {path} is missing or damaged ({e}); "
                           f"restore it with git checkout") from None
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.dtype != np.uint8 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(x) != len(y):
            raise DatasetError(f"bundled sample {path} has unexpected arrays {x.shape} {x.dtype}")
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), classes


def _read_split(root, files, label_key, num_classes):
    """Concatenate data files -> (uint8 (N, 32, 32, 3), int64 (N,))."""
    xs, ys = [], []
    for fname in files:
        x, y = _read_batch(os.path.join(root, fname), label_key, num_classes)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)
    # (N, 3072) -> (N, 3, 32, 32) -> (N, 32, 32, 3)
    x = np.ascontiguousarray(x.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
    return x, np.concatenate(ys)


def _read_batch(path, label_key, num_classes):
    """One data file -> (uint8 (N, 3072) rows, int64 (N,) labels), checked."""
    d = _read_pickle(path)
    data = _require_key(d, b"data", path)
    labels = _require_key(d, label_key, path)

    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise DatasetError(f"{path}: b'data' has shape {data.shape}, expected (N, {ROW_LENGTH})")
    if data.dtype != np.uint8:
        # Accept other integer arrays only when every value fits in a byte.
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(f"{path}: b'data' has dtype {data.dtype}, expected uint8 pixels")
        data = data.astype(np.uint8)

    try:
        labels = np.asarray(labels)
    except Exception:  # ragged nested lists
        raise DatasetError(f"{path}: {label_key!r} should be a flat list of integers") from None
    if labels.ndim == 1 and labels.size == 0:
        labels = labels.astype(np.int64)  # an empty list comes back as float64
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {label_key!r} should be a flat list of integers "
                           f"(got dtype {labels.dtype}, shape {labels.shape})")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(data)} images")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i} is outside "
                           f"[0, {num_classes})")
    return data, labels.astype(np.int64)


def _require_key(d, key, path):
    if key not in d:
        found = ", ".join(repr(k) for k in list(d)[:8])
        raise DatasetError(f"{path}: missing key {key!r} (found {found})")
    return d[key]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays and nothing else.

    A pickle can run arbitrary code through the globals it names; these files only ever need
    NumPy's array reconstructors, so any other global is refused.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path):
    """Load one pickled dict with bytes keys (the Python 2 originals need encoding='bytes')."""
    if not os.path.isfile(path):
        raise DatasetError(f"missing file {path}")
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from damaged bytes
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DatasetError(f"{path} is truncated or corrupted ({type(e).__name__}: {msg})") \
            from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    return d


# ----------------------------------------------------------------------------------------------
# Download


def download_and_extract(url, md5, data_dir, folder, timeout=60.0, progress=False):
    """Fetch a .tar.gz archive, check its MD5 and move `folder` from it into `data_dir`.

    The archive goes to a temporary file inside data_dir and is extracted into a temporary
    folder there; only when everything has succeeded is `folder` renamed into place, so a failed
    download or a wrong checksum leaves no half-written data set behind, and no folder that this
    call created (data_dir and its missing parents are removed again). When another process
    (a data-parallel rank, a second run) has put `folder` there in the meantime, its copy is
    kept and this one dropped. Archive members with an
    absolute path, a '..' component, or that are links or devices are refused.
    """
    created = _missing_parents(data_dir)
    try:
        try:
            os.makedirs(data_dir, exist_ok=True)
            fd, archive = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=data_dir)
        except OSError as e:
            raise DatasetError(f"cannot write into {data_dir}: {e.strerror or e}") from None
        try:
            _fetch(url, md5, fd, timeout, progress)
            _extract(url, archive, data_dir, folder)
        finally:
            if os.path.exists(archive):
                os.remove(archive)
    except BaseException:
        for d in reversed(created):           # deepest first; only folders left empty
            try:
                os.rmdir(d)
            except OSError:
                break
        raise


def _missing_parents(path):
    """The folders that os.makedirs(path) would create, outermost first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def _fetch(url, md5, fd, timeout, progress):
    """Stream `url` into the open file `fd`, checking its MD5 on the way."""
    from ..progress import Progress
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            size = int(resp.headers.get("Content-Length") or 0)
            bar = Progress(size or 1, f"download {os.path.basename(url)}", enabled=progress,
                           unit=" bytes")
            done = 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                bar.update(min(done, size) if size else 0, MiB=round(done / 2 ** 20, 1))
            bar.close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DatasetError(f"{url}: {reason}") from None
    if digest.hexdigest() != md5.lower():
        raise DatasetError(f"MD5 of {url} is {digest.hexdigest()}, expected {md5}")


def _extract(url, archive, data_dir, folder):
    """Move `folder` out of the checked archive into data_dir, through a temporary folder."""
    extract_dir = tempfile.mkdtemp(prefix=".extract-", dir=data_dir)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
                    tar.extractall(extract_dir, members=members, filter="data")
                else:
                    tar.extractall(extract_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"cannot extract {url}: {e}") from None
        src = os.path.join(extract_dir, folder)
        if not os.path.isdir(src):
            raise DatasetError(f"archive {url} has no '{folder}' folder")
        dest = os.path.join(data_dir, folder)
        try:
            os.replace(src, dest)
        except OSError as e:
            if not os.path.isdir(dest):
                raise DatasetError(f"cannot move {folder} into {data_dir}: "
                                   f"{e.strerror or e}") from None
            # another process (a data-parallel rank, a second run) put it there first: keep it
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)


def _check_member(m):
    parts = m.name.replace("\\", "/").split("/")
    if m.name.startswith(("/", "\\")) or os.path.isabs(m.name) or ".." in parts:
        raise DatasetError(f"unsafe path in archive: {m.name!r}")
    if not (m.isfile() or m.isdir()):
        raise DatasetError(f"archive member {m.name!r} is not a regular file or folder")


# ----------------------------------------------------------------------------------------------
# Synthetic stand-in


def make_synthetic_cifar(root, n_train=64, n_test=32, num_classes=10, seed=0):
    """Write a tiny, learnable data set in the exact 'cifar-10-batches-py' layout.

    Each class gets its own base colour and stripe pattern (orientation and frequency); every
    image is that template with random brightness and Gaussian noise, so a small network can
    learn it in a few steps. Labels are balanced and shuffled. The training images are split
    over data_batch_1..5 (some may be empty when n_train < 5).

    Returns `root`, to be passed as `data_dir` to `load_cifar('cifar10', root)`.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3))            # (K, 3)
    angles = rng.uniform(0, np.pi, size=num_classes)
    freqs = rng.uniform(0.2, 0.8, size=num_classes)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    phase = (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy)
    stripes = np.sin(freqs[:, None, None] * phase)                   # (K, 32, 32)
    templates = colours[:, None, None, :] + 35.0 * stripes[..., None]  # (K, 32, 32, 3)

    def images(n):
        y = rng.permutation(np.arange(n) % num_classes)
        gain = rng.uniform(0.8, 1.2, size=(n, 1, 1, 1))
        x = templates[y] * gain + rng.normal(0, 12, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y

    x_train, y_train = images(n_train)
    x_test, y_test = images(n_test)
    return write_cifar10_folder(root, x_train, y_train, x_test, y_test,
                                [f"class_{k}" for k in range(num_classes)], "synthetic")


def write_cifar10_folder(root, x_train, y_train, x_test, y_test, classes, what="minirate"):
    """Write images in the published 'cifar-10-batches-py' layout: `load_cifar('cifar10', root)`
    reads them back exactly.

    x_*: uint8 (N, 32, 32, 3) HWC; y_*: integer labels (N,); classes: class names. The training
    images are split over data_batch_1..5 in order (some may be empty when N < 5). Returns `root`.
    """
    folder = os.path.join(root, SPECS["cifar10"]["folder"])
    os.makedirs(folder, exist_ok=True)

    def write(name, label, x, y):
        # (n, 32, 32, 3) -> (n, 3, 32, 32) -> (n, 3072): CHW rows as in the real files
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), ROW_LENGTH)
        d = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"{what}_{i}.png".encode() for i in range(len(y))]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=4)

    n_train = len(x_train)
    for i, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        write(f"data_batch_{i}", f"{what} training batch {i} of 5", x_train[idx], y_train[idx])
    write("test_batch", f"{what} testing batch 1 of 1", x_test, y_test)

    meta = {b"num_cases_per_batch": -(-n_train // 5), b"num_vis": ROW_LENGTH,
            b"label_names": [str(c).encode() for c in classes]}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=4)
    return root
