"""ImageNet (ILSVRC-2012) from the standard folder layout, JPEGs decoded by Pillow in processes.

    DIR/train/<wnid>/*.JPEG      DIR/val/<wnid>/*.JPEG      (<wnid>: n01440764, ...)

Class k is the k-th wnid of train/ in sorted order (val/ must use the same wnids). Images are
converted to RGB (a few ImageNet files are greyscale or CMYK), then, as torchvision does:

    training    RandomResizedCrop(size): a box of area A·U(0.08, 1) and aspect ratio
                exp(U(ln 3/4, ln 4/3)) at a uniform position (10 tries, else the largest centred
                box of ratio clamped into [3/4, 4/3]), resized bilinearly to size × size, then
                mirrored with probability 1/2
    evaluation  bilinear resize so that the shorter side is `resize` (256), centre crop size (224)
    both        x = (pixel/255 − mean)/std per channel, mean (0.485, 0.456, 0.406),
                std (0.229, 0.224, 0.225); float32 (B, 3, size, size)

Randomness is per image: image i of epoch e's order draws from a generator seeded with
(seed, e, i). So the batches do not depend on how many processes decode them, and a data-parallel
rank that decodes only its shard of a global batch (`shard`) gets exactly those images of one
process's batch. Decoding runs in `workers` processes (a forkserver pool: a clean process, safe
to start from an MPI rank), each batch split into one piece per worker, `prefetch` batches ahead.

Every problem with the files is a `DatasetError` whose message is one line naming the path.
"""
import collections
import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .cifar import DatasetError
from .loader import epoch_order

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EXTENSIONS = (".jpeg", ".jpg", ".png")


# -- the folder ---------------------------------------------------------------------------------
def scan_split(root, split, classes=None):
    """(paths, labels int64, classes) of root/split/<wnid>/*; `classes` fixes the wnid order."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DatasetError(f"ImageNet folder {folder} not found (expected {root}/train/<wnid>/"
                           f"*.JPEG and {root}/val/<wnid>/*.JPEG)")
    found = sorted(d for d in _listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{folder} has class folders not in train/: {', '.join(unknown[:5])}")
    index = {wnid: k for k, wnid in enumerate(classes)}
    paths, labels = [], []
    for wnid in found:
        for name in sorted(_listdir(os.path.join(folder, wnid))):
            if name.lower().endswith(EXTENSIONS):
                paths.append(os.path.join(folder, wnid, name))
                labels.append(index[wnid])
    if not paths:
        raise DatasetError(f"no images (*.JPEG) in the class folders of {folder}")
    return paths, np.array(labels, dtype=np.int64), classes


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError as e:
        raise DatasetError(f"cannot list {folder}: {e.strerror or e}") from None


def load_imagenet(data_dir):
    """(train paths, train labels, val paths, val labels, class wnids) of an ImageNet folder."""
    train_paths, train_labels, classes = scan_split(data_dir, "train")
    val_paths, val_labels, _ = scan_split(data_dir, "val", classes)
    return train_paths, train_labels, val_paths, val_labels, classes


# -- one image ----------------------------------------------------------------------------------
def random_resized_crop_box(W, H, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(left, top, w, h) of a RandomResizedCrop box in a W × H image (module docstring)."""
    area = W * H
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h
    if W / H < ratio[0]:                     # too tall: full width
        w, h = W, int(round(W / ratio[0]))
    elif W / H > ratio[1]:                   # too wide: full height
        w, h = int(round(H * ratio[1])), H
    else:
        w, h = W, H
    return (W - w) // 2, (H - h) // 2, w, h


def resize_shorter(W, H, resize):
    """Size (w, h) with the shorter side `resize` and the aspect ratio kept (torchvision Resize)."""
    if W <= H:
        return resize, int(resize * H / W)
    return int(resize * W / H), resize


def decode(path, train, size, resize, seed):
    """One image as uint8 (size, size, 3): the training or the evaluation transform."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from None
    W, H = img.size
    if train:
        rng = np.random.default_rng(seed)
        left, top, w, h = random_resized_crop_box(W, H, rng)
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        w, h = resize_shorter(W, H, resize)
        img = img.resize((w, h), Image.BILINEAR)
        left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _forkserver():
    """The forkserver context; its server, when this call starts it, ignores SIGINT.

    A terminal's Ctrl-C reaches the whole process group, decoding workers included; only the
    training process should act on it (minirate/interrupt.py: stop after the step, then shut the
    workers down). A process started with SIGINT ignored keeps it ignored (Python installs its
    KeyboardInterrupt handler only over the default), and the server hands that disposition to
    every worker it forks: ignored from the worker's first instruction, during its start-up too.
    Meanwhile SIGINT is blocked here, so a Ctrl-C in that moment waits instead of being lost.
    SIGTERM keeps its default: the pool needs it to end the workers of a broken pool.
    """
    if threading.current_thread() is threading.main_thread():
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return multiprocessing.get_context("forkserver")


def _ignore_sigint():
    """In a decoding worker, once it runs (see `_forkserver`; for a server started elsewhere)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_many(paths, seeds, train, size, resize):
    """A worker's piece of a batch: uint8 (k, size, size, 3)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, (path, seed) in enumerate(zip(paths, seeds)):
        out[i] = decode(path, train, size, resize, seed)
    return out


def normalize(x):
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), (x/255 − mean)/std."""
    x = x.astype(np.float32) / 255.0
    x -= MEAN
    x /= STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))       # (B, H, W, 3) -> (B, 3, H, W)


# -- batches ------------------------------------------------------------------------------------
class ImageFolderLoader:
    """Iterate (float32 (b, 3, size, size), int64 (b,)) batches of JPEG files.

    Args:
        paths, labels: the files and their classes (`load_imagenet`).
        batch_size: the global batch; `shard(n) -> (lo, hi)` picks the part of each batch this
            process decodes (a data-parallel rank's `Communicator.shard_bounds`; default: all).
        train: shuffle every epoch and use the training transform; else file order, evaluation.
        seed: base seed of the order and of every image's crop and flip.
        size, resize: crop size (224) and the evaluation resize of the shorter side (256).
        workers: decoding processes (0: decode here, in this process).
        drop_last: drop the last incomplete batch; default: True when train.
        prefetch: batches decoding ahead of the one being consumed.
    """

    def __init__(self, paths, labels, batch_size, train, seed=0, size=224, resize=256, workers=4,
                 shard=None, drop_last=None, prefetch=2):
        if batch_size < 1 or size < 1 or resize < size or workers < 0:
            raise ValueError(f"need batch_size >= 1, resize >= size >= 1, workers >= 0; got "
                             f"{batch_size}, {resize}, {size}, {workers}")
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.size, self.resize, self.workers = int(size), int(resize), int(workers)
        self.shard = shard or (lambda n: (0, n))
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.prefetch = max(1, int(prefetch))

    def __len__(self):
        n, b = len(self.paths), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch):
        """Indices of the files in epoch `epoch`, in the order they are served."""
        return epoch_order(len(self.paths), self.seed, epoch, self.train)

    def _pieces(self, epoch, b, order):
        """This process's part of batch b as `workers` (paths, seeds) pieces, and its labels."""
        start = b * self.batch_size
        n = len(order[start:start + self.batch_size])
        lo, hi = self.shard(n)
        positions = np.arange(start + lo, start + hi)           # places in the epoch's order
        seeds = [int(np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, int(i)))
                     .generate_state(1)[0]) for i in positions]
        paths = [self.paths[i] for i in order[positions]]
        cuts = np.linspace(0, len(paths), max(1, self.workers) + 1).astype(int)
        pieces = [(paths[a:z], seeds[a:z]) for a, z in zip(cuts[:-1], cuts[1:]) if z > a]
        return pieces, self.labels[order[positions]]

    def iter_epoch(self, epoch, start_batch=0):
        """Batches start_batch, ..., len(self)-1 of epoch `epoch` (this process's parts)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        return self._run(epoch, start_batch)

    def _run(self, epoch, start_batch):
        order = self.order(epoch)
        args = (self.train, self.size, self.resize)
        if self.workers == 0:
            for b in range(start_batch, len(self)):
                pieces, y = self._pieces(epoch, b, order)
                yield self._stack([decode_many(*p, *args) for p in pieces]), y
            return
        pool = ProcessPoolExecutor(self.workers, _forkserver(), initializer=_ignore_sigint)
        in_flight = collections.deque()             # (futures of a batch's pieces, labels)
        try:
            for b in range(start_batch, len(self)):
                pieces, y = self._pieces(epoch, b, order)
                in_flight.append(([pool.submit(decode_many, *p, *args) for p in pieces], y))
                if len(in_flight) > self.prefetch:
                    yield self._collect(*in_flight.popleft())
            while in_flight:
                yield self._collect(*in_flight.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, futures, y):
        return self._stack([f.result() for f in futures]), y

    def _stack(self, parts):
        """Decoded pieces -> one normalised float32 (b, 3, size, size) batch (b may be 0)."""
        if not parts:
            parts = [np.empty((0, self.size, self.size, 3), dtype=np.uint8)]
        return normalize(np.concatenate(parts))
