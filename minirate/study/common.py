"""What every study shares: its inputs (images, checkpoints, method specs), memory measurement,
progress, the output files and the command-line pieces."""
import argparse
import csv
import json
import math
import os
import sys
import time
import tracemalloc
from typing import NamedTuple

import numpy as np

from ..backend import DEVICES, synchronize
from ..checkpoint import CheckpointError, load_checkpoint
from ..cli import positive_float, positive_int
from ..costs import method_costs
from ..data.augment import normalize
from ..data.cifar import SAMPLE, SPECS, load_cifar
from ..layers.base import StateDictError
from ..methods import METHODS, make_method
from ..models import ARCHS, build_model
from ..progress import Progress

NEURON_KEYS = ("decay", "threshold", "reset", "v_reset", "detach_reset", "surrogate", "alpha")
MiB = 2 ** 20
HEARTBEAT_S = 10        # a progress line at least this often when stderr is not a terminal


class StudyError(Exception):
    """A problem with what was asked for; reported as one line, exit status 1."""


def note(text):
    print(f"note: {text}", file=sys.stderr, flush=True)


# -- images -------------------------------------------------------------------------------
def load_images(dataset, data_dir, split="test"):
    """uint8 (N, 32, 32, 3) images and int64 labels of a split. A data set that does not load
    is an error (DatasetError, one line), never a silent switch to other images."""
    x_train, y_train, x_test, y_test, _ = load_cifar(dataset, data_dir, download=False)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def load_batch(dataset, data_dir, batch_size):
    """The first `batch_size` test images, normalised: float32 (B, 3, 32, 32), int64 (B,), and a
    text naming where they come from."""
    x, y = load_images(dataset, data_dir)
    if batch_size > len(x):
        raise StudyError(f"--batch-size {batch_size} is larger than the {len(x)} test images "
                         f"of {dataset}")
    return normalize(x[:batch_size], dataset), y[:batch_size], f"{SPECS[dataset]['title']} test"


def model_from_checkpoint(path):
    """The network train.py saved at `path` (weights, batchnorm statistics): (model, config)."""
    arrays, meta = load_checkpoint(path)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or cfg.get("arch") not in ARCHS \
            or cfg.get("dataset", "cifar10") not in SPECS:
        raise CheckpointError(f"{path} is not a checkpoint of train.py (no usable config)")
    neuron = {k: cfg[k] for k in NEURON_KEYS if k in cfg}
    num_classes = SPECS[cfg.get("dataset", "cifar10")]["num_classes"]
    try:
        model = build_model(cfg["arch"], num_classes, cfg.get("width", 1.0), neuron)
        model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items()
                               if k.startswith("model/")})
    except (StateDictError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit a {cfg['arch']} model: {e}") from None
    return model, cfg


# -- methods: 'bptt', 'rate_s', 'tbptt:K=2', 'local:N=2', 'tbptt:K=2:N=2', 'bptt:mode=s' ----------
SPEC_NAMES = ("bptt", "rate", "rate_m", "rate_s", "tbptt", "local")


class MethodSpec(NamedTuple):
    label: str            # as written
    name: str             # method name for make_method: bptt, rate_m, rate_s, tbptt
    step_mode: str        # 'm' or 's'
    window: object        # K (tbptt), or None: all T steps
    local_blocks: int     # N (1: end-to-end)

    def kwargs(self, T):
        """make_method keyword arguments beyond the defaults (K is capped at T)."""
        kw = {}
        if self.window is not None:
            kw["window"] = min(self.window, T)
        if self.local_blocks != 1:
            kw["local_blocks"] = self.local_blocks
        return kw

    def costs(self, model, x_shape, T, split_at=None):
        """`costs.method_costs` of this method for one step on a batch of shape x_shape."""
        return method_costs(model, x_shape, T, self.name, self.step_mode, self.window,
                            self.local_blocks, split_at)


def parse_method_spec(text):
    """'name[:key=value...]' -> MethodSpec. Keys: K (tbptt window), N (local blocks), mode (m|s,
    bptt/tbptt). 'local' is BPTT with local blocks (default N=2); 'rate' is rate_m."""
    name, *options = text.split(":")
    if name not in SPEC_NAMES:
        raise argparse.ArgumentTypeError(f"unknown method {name!r} in {text!r}; choose from "
                                         f"{', '.join(SPEC_NAMES)} (e.g. tbptt:K=2, local:N=2)")
    values = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or key not in ("K", "N", "mode") or key in values:
            raise argparse.ArgumentTypeError(f"bad option {opt!r} in method {text!r}; use K=, "
                                             f"N= or mode=, once each")
        values[key] = value
    try:
        window = positive_int(values["K"]) if "K" in values else None
        blocks = positive_int(values.get("N", "2" if name == "local" else "1"))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"method {text!r}: K and N {e}") from None
    if window is not None and name != "tbptt":
        raise argparse.ArgumentTypeError(f"method {text!r}: K= is the tbptt window")
    mode = values.get("mode", "s" if name == "rate_s" else "m")
    if mode not in ("m", "s") or ("mode" in values and name not in ("bptt", "tbptt", "local")):
        raise argparse.ArgumentTypeError(f"method {text!r}: mode= is m or s, for bptt/tbptt/local")
    base = {"local": "bptt", "rate": "rate_m"}.get(name, name)
    return MethodSpec(text, base, mode, window, blocks)


def method_specs(text):
    """Comma-separated method specs -> list of MethodSpec (argparse type)."""
    return [parse_method_spec(t) for t in text.split(",")]


class MethodUnavailable(Exception):
    """The method of a spec is not in this build of minirate.methods (a cell to skip)."""


def build_method(spec, model, T, **extra):
    """make_method for a spec, or MethodUnavailable naming what is missing."""
    if spec.name not in METHODS:
        raise MethodUnavailable(f"{spec.label}: method {spec.name!r} is not registered in "
                                f"minirate.methods (available: {', '.join(METHODS)})")
    try:
        return make_method(spec.name, model, T, spec.step_mode, **spec.kwargs(T), **extra)
    except TypeError as e:                      # an option this build does not take
        raise MethodUnavailable(f"{spec.label}: {e}") from None


def split_points(method):
    """The block starts (module names) a local method reports as its `split_at`, or None: the
    cost model then takes its own default (`costs.default_split`)."""
    names = getattr(method, "split_at", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


# -- measuring ----------------------------------------------------------------------------
def peak_step_bytes(xp, fn):
    """Peak bytes in use while `fn()` runs, above the level just before it."""
    if xp is np:
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            if not tracing:
                tracemalloc.stop()
    pool = xp.get_default_memory_pool()
    synchronize(xp)
    before = peak = pool.used_bytes()

    def malloc(nbytes):             # the pool's own allocator, reading its level after each call
        nonlocal peak
        mem = pool.malloc(nbytes)
        peak = max(peak, pool.used_bytes())
        return mem

    with xp.cuda.using_allocator(malloc):
        fn()
        synchronize(xp)
    return peak - before


class Bar:
    """Progress of a study on stderr: a line when a new cell starts, and within a long cell (a
    training) at least one every HEARTBEAT_S seconds, so that a log never goes silent."""

    def __init__(self, desc):
        self.desc, self.bar, self.last, self.cell = desc, None, 0.0, None

    def __call__(self, i, n, **fields):
        now = time.perf_counter()
        if self.bar is None:
            self.bar = Progress(n, self.desc, every=1)
        if i != self.cell or self.bar.tty or now - self.last >= HEARTBEAT_S:
            self.bar.update(i + 1, **fields)
            self.last, self.cell = now, i

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- output -------------------------------------------------------------------------------
def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_rows(out, stem, rows, info):
    """rows -> OUT/stem.csv and OUT/stem.json ({'info': ..., 'rows': ...}). Returns both paths."""
    csv_path, json_path = os.path.join(out, stem + ".csv"), os.path.join(out, stem + ".json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(json_path, "w") as f:
        json.dump({"info": info, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]},
                  f, indent=1)
    return [csv_path, json_path]


def format_table(header, lines):
    """A plain text table, columns right-aligned to their widest entry."""
    cells = [header] + [[str(c) for c in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def giga(n):
    """A count in units of 10⁹, for tables: '1.234'."""
    return "-" if n is None else f"{n / 1e9:.3f}"


def cost_cells(row):
    """The cost columns of a table row: GMACs, GACs, memory accesses in MiB."""
    return [giga(row["macs"]), giga(row["acs"]), f"{row['mem_bytes'] / MiB:.1f}"]


COST_HEADER = ["GMAC", "GAC", "mem acc MiB"]
COST_KEYS = ("fwd_macs", "fwd_acs", "bwd_macs", "bwd_acs", "macs", "acs", "read_bytes",
             "write_bytes", "mem_bytes")


def make_out(out):
    """Create --out now (before the work) and check it takes files; returns the folders this
    created, deepest first, so that a failed run can take them away again."""
    created, path = [], os.path.abspath(out)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        remove_empty(created)
        raise StudyError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return created


def remove_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


# -- command-line pieces -------------------------------------------------------------------
def int_list(text):
    return [positive_int(t) for t in text.split(",")]


def add_model_options(s):
    s.add_argument("--arch", choices=ARCHS, default="small", help="architecture")
    s.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier")
    s.add_argument("--seed", type=int, default=0, help="weight initialisation")


def add_common_options(s, batch_size, from_checkpoint=False):
    """--batch-size, --device, --dataset, --data-dir, --out. from_checkpoint: --dataset and
    --data-dir default to those in the checkpoint's config (see `checkpoint_data`)."""
    s.add_argument("--batch-size", type=positive_int, default=batch_size, help="images")
    s.add_argument("--device", choices=DEVICES, default="cpu", help="cuda needs CuPy")
    own = " (default: the checkpoint's own, else %s)" % SAMPLE if from_checkpoint else ""
    s.add_argument("--dataset", choices=tuple(SPECS), default=None if from_checkpoint else SAMPLE,
                   help=f"images{own}; {SAMPLE} ships with minirate (no --data-dir needed)")
    s.add_argument("--data-dir", default=None if from_checkpoint else "data",
                   help="folder holding cifar-10-batches-py/ for --dataset cifar10 (e.g. "
                        "../shared/data/cifar10-subset); a folder that fails to load is an "
                        "error" + (" (default: the checkpoint's own)" if from_checkpoint else ""))
    s.add_argument("--out", default="runs/study", help="folder for the csv/json/png files")


def checkpoint_data(a, cfg):
    """(dataset, data_dir): --dataset / --data-dir where given, else the checkpoint config's
    (train.py saves both), else the bundled sample."""
    dataset = a.dataset or (cfg or {}).get("dataset") or SAMPLE
    data_dir = a.data_dir or (cfg or {}).get("data_dir") or "data"
    return dataset, data_dir
