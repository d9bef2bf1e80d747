"""python -m minirate.study SUBCOMMAND: parses the command line and runs one study.

    python -m minirate.study memory-time --arch small --batch-size 16 --T 1,2,4,8
    python -m minirate.study gradients --arch small --batch-size 16 --T 1,2,4
    python -m minirate.study firing --checkpoint runs/quick/last.npz
    python -m minirate.study design-space --arch small --width 0.25 --K 1,2,4 --N 1,2,3
    python -m minirate.study gradients --methods sltt,sltt:K=2,ottt --T 1,2,4
    python -m minirate.study memory-time --dataset cifar10dvs --data-dir data --frame-size 48
    python -m minirate.study curves runs/bptt-T4 runs/rate-T4 --out runs/study

Each subcommand writes NAME.csv, NAME.json and NAME.png (design-space: one PNG per quantity)
into --out and prints its table. Images come from the bundled CIFAR-10 sample unless --dataset /
--data-dir say otherwise; --dataset cifar10dvs or dvsgesture feeds event frames (T, B, 2, H, W);
a data set that fails to load is an error. curves reads no data: the metrics.jsonl of runs of
train.py.
"""
import argparse
import importlib
import os
import sys

from ..backend import DeviceError, get_xp
from ..checkpoint import CheckpointError
from ..cli import ArgumentParser
from ..data.cifar import DatasetError
from ..memory import MemoryShortage
from .common import Bar, StudyError, make_out, remove_empty, write_rows

# subcommand -> (file stem of its outputs, its module: add_parser(sub, fmt), run(a, xp, bar));
# modules by name, since the package exports functions of the same names
STUDIES = {cmd: (stem, importlib.import_module(f"{__package__}.{stem}"))
           for cmd, stem in (("memory-time", "memory_time"), ("gradients", "gradients"),
                             ("firing", "firing"), ("design-space", "design_space"),
                             ("curves", "curves"))}


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m minirate.study", allow_abbrev=False,
                       description="The method comparison, measured: memory, time and costs "
                                   "against T, gradients against BPTT, firing, the design "
                                   "space of truncation window x local blocks, and the "
                                   "training curves of runs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(STUDIES) + "}")
    for _, module in STUDIES.values():
        module.add_parser(sub, argparse.ArgumentDefaultsHelpFormatter)
    a = p.parse_args(argv)
    if getattr(a, "warmup", 0) < 0:
        p.error("argument --warmup: must be >= 0")
    return a


def main(argv=None):
    """The command line. Returns the exit status: 0, or 1 after a one-line error on stderr
    (a malformed command line exits with status 2 from the parser)."""
    a = parse_args(argv)
    try:
        return _main(a)
    except (StudyError, DatasetError, CheckpointError, DeviceError, ValueError,
            MemoryShortage) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError:       # outside a step that memory-time checks
        print("error: out of memory; lower --batch-size, --T or --width", file=sys.stderr)
        return 1


def _main(a):
    stem, module = STUDIES[a.command]
    xp = get_xp(a.device)
    created = make_out(a.out)       # fail on an unwritable --out before the work, not after
    bar = Bar(a.command)
    try:
        rows, info, table, plot, title = module.run(a, xp, bar)
    except BaseException:
        remove_empty(created)       # no empty --out left behind by a failed run
        raise
    bar.close()
    try:                            # files first: a closed stdout must not cost the results
        paths = write_rows(a.out, stem, rows, info)
        png = os.path.join(a.out, stem + ".png")
        paths += plot(rows, png, title) or [png]     # a plot may write several files
    except OSError as e:
        raise StudyError(f"cannot write to --out {a.out}: {e.strerror or e}") from None
    print(table)
    print("wrote: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
