"""The data sets train.py trains on, and the loaders of the chosen one.

    data = make_loaders(cfg, comm)     # data.train, data.test: loaders of global batches
    xb = data.shard(xb)                # this rank's part of a batch (under mpirun -n N)

CIFAR (cifar.py, loader.py) is read whole into memory and every rank builds the global batch;
ImageNet (imagenet.py) is decoded from JPEG folders, each rank only its shard; event data
(events/) are T frames read per sample from an HDF5 cache. Errors are one line: a DatasetError
for missing or malformed files, a UsageError for a batch the data set cannot fill.
"""
import sys
from typing import Callable, NamedTuple

from ..cli import UsageError
from ..methods.common import is_time_varying
from .cifar import SPECS, load_cifar
from .events import EVENT_DATASETS, event_loaders
from .imagenet import ImageFolderLoader, load_imagenet
from .loader import Loader

DATASETS = {"cifar10": 10, "cifar100": 100, "cifar10-sample": 10,   # name -> classes
            "imagenet": None,                                          # None: its folders
            "cifar10dvs": 10, "dvsgesture": 11}        # event data: T frames of 2 polarities


class Data(NamedTuple):
    train: object          # loader of training batches: .iter_epoch(epoch, start_batch)
    test: object           # loader of test batches
    shard: Callable        # a global batch (or its labels) -> this rank's part
    num_classes: int
    n_train: int           # samples in each split
    n_test: int
    title: str             # the data set's name in the log


def make_loaders(cfg, comm):
    """The training and test loaders of cfg["dataset"], with how a rank takes its part."""
    lead = comm.rank == 0
    if cfg["dataset"] == "imagenet":   # JPEG folders; each rank decodes only its shard
        x_train, y_train, x_test, y_test, classes = load_imagenet(cfg["data_dir"])
        num_classes = len(classes)
        size = cfg["image_size"]
        resize = round(size * 256 / 224)
        train_loader = ImageFolderLoader(x_train, y_train, cfg["batch_size"], train=True,
                                         seed=cfg["seed"], size=size, resize=resize,
                                         workers=cfg["workers"], shard=comm.shard_bounds)
        test_loader = ImageFolderLoader(x_test, y_test, cfg["eval_batch_size"], train=False,
                                        size=size, resize=resize, workers=cfg["workers"],
                                        shard=comm.shard_bounds)
        title = f"ImageNet folders in {cfg['data_dir']}"

        def shard(a):                # the loaders already give this rank's part
            return a
    elif cfg["dataset"] in EVENT_DATASETS:
        train_loader, test_loader, n_train, n_test = event_data(cfg)
        num_classes = DATASETS[cfg["dataset"]]
        title = f"{cfg['dataset']} frames"

        def shard(a):                # frames (T, B, ...) by their batch axis, labels (B,)
            if is_time_varying(a):
                return a[:, slice(*comm.shard_bounds(a.shape[1]))]
            return comm.shard(a)
    else:
        x_train, y_train, x_test, y_test, _ = load_cifar(cfg["dataset"], cfg["data_dir"],
                                                         download=cfg["download"],
                                                         progress=cfg["progress"] and lead)
        num_classes = DATASETS[cfg["dataset"]]
        train_loader = Loader(x_train, y_train, cfg["batch_size"], train=True, seed=cfg["seed"],
                              crop=cfg["crop"], flip=cfg["flip"], cutout=cfg["cutout"],
                              autoaugment=cfg["autoaugment"], dataset=cfg["dataset"],
                              pipeline=cfg["cifar_pipeline"])
        test_loader = Loader(x_test, y_test, cfg["eval_batch_size"], train=False,
                             seed=cfg["seed"], dataset=cfg["dataset"],
                             pipeline=cfg["cifar_pipeline"])
        title = SPECS[cfg["dataset"]]["title"]
        shard = comm.shard           # every rank builds the global batch and keeps its part
    if cfg["dataset"] not in EVENT_DATASETS:
        n_train, n_test = len(x_train), len(x_test)
    if cfg["batch_size"] > n_train:
        raise UsageError(f"--batch-size {cfg['batch_size']} is larger than the "
                         f"{n_train} training samples")
    if cfg["batch_size"] % comm.size:
        raise UsageError(f"--batch-size {cfg['batch_size']} (the global batch) must be a "
                         f"multiple of the {comm.size} ranks")
    return Data(train_loader, test_loader, shard, num_classes, n_train, n_test, title)


def event_data(cfg):
    """Loaders of an event data set: (T, B, 2, H, W) frames read per sample from the HDF5 cache
    (built from the recordings in --data-dir on first use)."""
    try:
        train, test = event_loaders(cfg["dataset"], cfg["data_dir"], cfg["T"], cfg["batch_size"],
                                    cfg["eval_batch_size"], cfg["seed"], cfg["flip"], cfg["roll"],
                                    cfg["frame_size"], cfg["split_by"], cfg["event_split"] or None,
                                    cfg["cache_dir"] or None, cfg["progress"],
                                    cfg["event_pipeline"], cfg["event_split_order"])
    except KeyboardInterrupt:      # the conversion stopped after a whole sample; partial file kept
        print("\ninterrupted while building the frame cache; run the same command again to "
              "continue the conversion", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    return train, test, len(train.index), len(test.index)

