"""python -m minirate.data.events: convert recordings to the frame cache, or download them.

    python -m minirate.data.events convert cifar10dvs --data-dir data --T 10 --frame-size 48
    python -m minirate.data.events download cifar10dvs --data-dir data

`convert` is resumable: after an interruption, the same command continues where it stopped.
Ctrl-C (or SIGTERM) stops it after the sample in hand, keeps the partial file and exits with
status 130; a second conversion of the same cache waits for the one running.
Errors are one line on stderr and exit status 1 (2 for a malformed command line).
"""
import os
import sys

from ...cli import ArgumentParser, positive_int
from ..cifar import DatasetError
from .cache import cache_name, convert_with_progress
from .datasets import NUM_CLASSES, list_samples
from .download import download_cifar10dvs
from .frames import SPLITS


def main(argv=None):
    p = ArgumentParser(prog="python -m minirate.data.events", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="build the HDF5 frame cache (resumable)")
    c.add_argument("dataset", choices=tuple(NUM_CLASSES))
    c.add_argument("--data-dir", default="data", help="folder holding CIFAR10-DVS/ or DvsGesture/")
    c.add_argument("--cache-dir", default="", help="where the .h5 goes (default: --data-dir)")
    c.add_argument("--T", type=positive_int, default=10, help="frames per sample")
    c.add_argument("--split-by", choices=SPLITS, default="count",
                   help="equal event count per frame, or equal time")
    c.add_argument("--frame-size", type=positive_int, default=48, help="frames resized to N x N")
    c.add_argument("--no-progress", dest="progress", action="store_false")
    d = sub.add_parser("download", help="fetch CIFAR10-DVS (resumable, MD5-checked)")
    d.add_argument("dataset", choices=("cifar10dvs",))
    d.add_argument("--data-dir", default="data")
    args = p.parse_args(argv)
    if args.command == "download":
        print(f"done: {download_cifar10dvs(args.data_dir)}")
        return 0
    cache_dir = args.cache_dir or args.data_dir
    path = os.path.join(cache_dir, cache_name(args.dataset, args.T, args.split_by, args.frame_size))
    if os.path.exists(path):
        print(f"{path} already exists (delete it to convert again)")
        return 0
    list_samples(args.dataset, args.data_dir)      # missing recordings: fail before writing
    os.makedirs(cache_dir, exist_ok=True)
    convert_with_progress(args.dataset, args.data_dir, path, args.T, args.split_by,
                          args.frame_size, args.progress)
    print(f"done: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:      # what was converted or downloaded so far is kept
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
