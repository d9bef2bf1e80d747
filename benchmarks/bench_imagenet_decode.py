"""ImageNet decoding speed: decoded and transformed images per second, per worker process.

    python benchmarks/bench_imagenet_decode.py --images 192 --workers 1 2

Writes --images JPEGs of ImageNet's typical size (500 x 375, quality 90, a smooth picture with
noise: about 75 KB a file, ImageNet averages about 110 KB) into a temporary ImageNet folder,
then times one pass of the training transform (decode, RandomResizedCrop 224, flip, normalise)
and one of the evaluation transform (decode, resize 256, centre crop 224, normalise) through
minirate's ImageFolderLoader with each --workers count, side by side in one run. Or point
--data-dir at a real ImageNet folder (its first --images training and validation files).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.data.imagenet import ImageFolderLoader, load_imagenet  # noqa: E402


def write_folder(root, n, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    sizes = []
    for split in ("train", "val"):
        folder = os.path.join(root, split, "n00000000")
        os.makedirs(folder)
        for i in range(n):
            f = rng.uniform(0.005, 0.05, size=3)
            img = np.stack([128 + 100 * np.sin(f[c] * (xx + 1.3 * yy) + c) for c in range(3)], -1)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            path = os.path.join(folder, f"img_{i}.JPEG")
            Image.fromarray(img).save(path, quality=90)
            sizes.append(os.path.getsize(path))
    return float(np.mean(sizes))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default="")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data_dir
        if not root:
            root = tmp
            kb = write_folder(root, a.images) / 1024
            print(f"{a.images} generated 500x375 JPEGs per split, {kb:.0f} KB on average")
        train, ytr, val, yval, _ = load_imagenet(root)
        train, ytr, val, yval = train[:a.images], ytr[:a.images], val[:a.images], yval[:a.images]
        print(f"{os.cpu_count()} cores\n")
        print("| transform | workers | images/s | images/s per worker |")
        print("|---|---|---|---|")
        for is_train, paths, labels in ((True, train, ytr), (False, val, yval)):
            for w in a.workers:
                loader = ImageFolderLoader(paths, labels, a.batch_size, train=is_train, workers=w,
                                           drop_last=False)
                it = loader.iter_epoch(0)
                first = next(it)                 # pool start-up and the first batch: not timed
                t0, n = time.perf_counter(), 0
                for x, _ in it:
                    n += len(x)
                rate = n / (time.perf_counter() - t0)
                assert first[0].shape[1:] == (3, 224, 224)
                name = "train (RandomResizedCrop + flip)" if is_train else "eval (resize + crop)"
                print(f"| {name} | {w} | {rate:.0f} | {rate / w:.0f} |")


if __name__ == "__main__":
    main()
