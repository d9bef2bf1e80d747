"""Loader: coverage, order, determinism, resuming, early stop and worker errors."""
import threading
import time

import numpy as np
import pytest

from minirate.data.augment import normalize
from minirate.data.loader import Loader

N = 103  # not a multiple of the batch size


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
    y = np.arange(N)  # label = image index, so batches say which images they hold
    return x, y


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("loader-")]


def wait_no_threads(timeout=2.0):
    end = time.monotonic() + timeout
    while loader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not loader_threads()


def collect(it):
    return [(xb.copy(), yb.copy()) for xb, yb in it]


def test_train_covers_each_image_once(data):
    x, y = data
    loader = Loader(x, y, batch_size=16, train=True, seed=1, cutout=16, drop_last=False)
    assert len(loader) == 7
    batches = collect(loader.iter_epoch(0))
    assert len(batches) == 7
    assert [len(yb) for _, yb in batches] == [16] * 6 + [7]
    labels = np.concatenate([yb for _, yb in batches])
    assert labels.dtype == np.int64
    assert np.array_equal(np.sort(labels), y) and not np.array_equal(labels, y)  # shuffled
    for xb, _ in batches:
        assert xb.dtype == np.float32 and xb.shape[1:] == (3, 32, 32)

    dropped = Loader(x, y, batch_size=16, train=True, seed=1)  # drop_last defaults to True
    assert len(dropped) == 6
    labels = np.concatenate([yb for _, yb in dropped.iter_epoch(0)])
    assert len(labels) == 96 and len(np.unique(labels)) == 96


def test_eval_in_order_unaugmented(data):
    x, y = data
    loader = Loader(x, y, batch_size=10, train=False, dataset="cifar100")
    assert len(loader) == 11
    batches = collect(loader)
    assert np.array_equal(np.concatenate([yb for _, yb in batches]), y)
    assert np.array_equal(np.concatenate([xb for xb, _ in batches]), normalize(x, "cifar100"))


def test_same_seed_same_batches(data):
    x, y = data
    kw = dict(batch_size=16, train=True, cutout=16)
    a = collect(Loader(x, y, seed=5, **kw).iter_epoch(3))
    b = collect(Loader(x, y, seed=5, prefetch=1, **kw).iter_epoch(3))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    other_seed = collect(Loader(x, y, seed=6, **kw).iter_epoch(3))
    other_epoch = collect(Loader(x, y, seed=5, **kw).iter_epoch(4))
    assert not np.array_equal(a[0][1], other_seed[0][1])
    assert not np.array_equal(a[0][1], other_epoch[0][1])


def test_iter_advances_epoch(data):
    x, y = data
    loader = Loader(x, y, batch_size=32, train=True, seed=np.random.default_rng(0))
    first = collect(loader)
    second = collect(loader)
    assert loader.epoch == 2
    assert np.array_equal(first[0][0], collect(loader.iter_epoch(0))[0][0])
    assert not np.array_equal(first[0][1], second[0][1])


@pytest.mark.parametrize("autoaugment", [False, True])
def test_resume_matches_tail(data, autoaugment):
    x, y = data
    loader = Loader(x, y, batch_size=8, train=True, seed=11, cutout=16, autoaugment=autoaugment)
    full = collect(loader.iter_epoch(2))
    for k in (0, 5, len(loader) - 1, len(loader)):
        tail = collect(loader.iter_epoch(2, start_batch=k))
        assert len(tail) == len(full) - k
        for (xa, ya), (xb, yb) in zip(full[k:], tail):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    with pytest.raises(ValueError, match="start_batch"):
        loader.iter_epoch(0, start_batch=len(loader) + 1)


def test_early_break_does_not_hang(data):
    x, y = data
    loader = Loader(x, y, batch_size=4, train=True, seed=0, prefetch=2)
    for i, _ in enumerate(loader.iter_epoch(0)):
        if i == 1:
            break
    assert wait_no_threads()

    it = loader.iter_epoch(1)
    next(it)
    time.sleep(0.05)  # let the worker fill the queue and block on it
    it.close()
    assert not loader_threads()  # close() joins the worker


def test_worker_exception_propagates(data):
    x, y = data
    loader = Loader(x, y, batch_size=16, train=True, seed=0)
    make_batch = loader.make_batch

    def failing(epoch, b, order):
        if b == 2:
            raise RuntimeError("boom in batch 2")
        return make_batch(epoch, b, order)

    loader.make_batch = failing
    seen = []
    with pytest.raises(RuntimeError, match="boom in batch 2"):
        for _, yb in loader.iter_epoch(0):
            seen.append(yb)
    assert len(seen) == 2
    assert wait_no_threads()


def test_bad_arguments(data):
    x, y = data
    with pytest.raises(ValueError, match="uint8"):
        Loader(x.astype(np.float32), y, 8, train=True)
    with pytest.raises(ValueError, match="shape"):
        Loader(x, y[:-1], 8, train=True)
    with pytest.raises(ValueError, match="mnist"):
        Loader(x, y, 8, train=True, dataset="mnist")


def test_real_sample_eval_batches():
    from minirate.data.cifar import load_cifar
    _, _, x_test, y_test, _ = load_cifar("cifar10-sample", None)
    loader = Loader(x_test, y_test, batch_size=128, train=False)
    assert len(loader) == 2
    xb, yb = next(iter(loader))
    assert xb.shape == (128, 3, 32, 32) and np.array_equal(yb, y_test[:128])
    assert np.allclose(xb, normalize(x_test[:128]))
