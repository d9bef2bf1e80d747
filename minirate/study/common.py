"""What every study shares: its inputs (images, checkpoints, method specs), memory measurement,
progress, the output files and the command-line pieces."""
import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
import tracemalloc
from typing import NamedTuple

import numpy as np

from ..backend import devices, synchronize
from ..checkpoint import CheckpointError, load_checkpoint, section
from ..cli import positive_float, positive_int, unit_interval
from ..costs import method_costs
from ..data.augment import normalize
from ..data.cifar import SAMPLE, SPECS, load_cifar
from ..data.events import EVENT_DATASETS, NUM_CLASSES, event_loaders
from ..layers.base import StateDictError
from ..layers.winograd import ALGOS, set_conv_algo
from ..losses import ce_mse, cross_entropy
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


# -- data: images, or event frames --------------------------------------------------------
DATASETS = tuple(SPECS) + EVENT_DATASETS
EVENT_KEYS = ("frame_size", "split_by", "event_split", "cache_dir")   # as train.py names them


def num_classes_of(dataset):
    return NUM_CLASSES[dataset] if dataset in EVENT_DATASETS else SPECS[dataset]["num_classes"]


def in_channels_of(dataset):
    """2 for event frames (one channel per polarity), 3 for RGB images."""
    return 2 if dataset in EVENT_DATASETS else 3


def title_of(dataset):
    return f"{dataset} frames" if dataset in EVENT_DATASETS else SPECS[dataset]["title"]


class DataSource(NamedTuple):
    """Where a study's inputs come from: a data set, its folder and, for event data, how the
    recordings become frames (train.py's --frame-size, --split-by, --event-split, --cache-dir)."""
    dataset: str
    data_dir: str
    frame_size: int = 48
    split_by: str = "count"
    event_split: str = ""
    cache_dir: str = ""

    @property
    def events(self):
        return self.dataset in EVENT_DATASETS

    @property
    def in_channels(self):
        return in_channels_of(self.dataset)

    @property
    def num_classes(self):
        return num_classes_of(self.dataset)

    def describe(self, split="test"):
        if not self.events:
            return f"{SPECS[self.dataset]['title']} {split}"
        return (f"{self.dataset} {split} frames ({self.frame_size}x{self.frame_size}, by "
                f"{self.split_by})")

    def load(self, T, split="test", n=None, seed=0):
        """Inputs and labels of a split: images normalised to float32 (N, 3, H, W), the same at
        every T; event frames binned for T, float32 (T, N, 2, S, S), N samples drawn at random
        (seeded) from the split (a class-ordered split's first samples are one class). n: at
        most this many (None: all)."""
        if not self.events:
            x, y = load_images(self.dataset, self.data_dir, split)
            return normalize(x[:n], self.dataset), y[:n]
        with contextlib.redirect_stdout(sys.stderr):        # the cache notice is not a result
            loaders = event_loaders(self.dataset, self.data_dir, T, 1, 1, flip=False, roll=0,
                                    size=self.frame_size, split_by=self.split_by,
                                    split=self.event_split or None,
                                    cache_dir=self.cache_dir or None, progress=sys.stderr.isatty())
        loader = loaders[0] if split == "train" else loaders[1]
        try:
            if not len(loader.index):
                raise StudyError(f"the {split} split of {self.dataset} in {self.data_dir} has no "
                                 f"samples")
            pick = np.sort(np.random.default_rng(seed).permutation(len(loader.index))[:n])
            x = np.stack([loader.frames.frames(i) for i in loader.index[pick]])   # (N, T, ...)
            return np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4)), loader.y[pick]
        finally:
            loader.frames.close()

    def batch(self, T, batch_size):
        """`batch_size` test inputs (x, y) at T: the first images, or frames drawn as in
        `load` (the same samples at every T)."""
        x, y = self.load(T, "test", batch_size)
        if batch_size > len(y):
            raise StudyError(f"--batch-size {batch_size} is larger than the {len(y)} test "
                             f"samples of {self.dataset}")
        return x, y


def load_images(dataset, data_dir, split="test"):
    """uint8 (N, 32, 32, 3) images and int64 labels of a split. A data set that does not load
    is an error (DatasetError, one line), never a silent switch to other images."""
    x_train, y_train, x_test, y_test, _ = load_cifar(dataset, data_dir, download=False)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def check_channels(model, data):
    """A network trained on images cannot read event frames, nor the other way round."""
    first = next(p for _, p, _, _ in model.parameters())
    if first.ndim == 4 and first.shape[1] != data.in_channels:
        raise StudyError(f"the network takes {first.shape[1]} input channels; {data.dataset} "
                         f"has {data.in_channels}")


def model_from_checkpoint(path, conv_algo="im2col"):
    """The network train.py saved at `path` (weights, batchnorm statistics), its convolutions
    set to run `conv_algo`: (model, config)."""
    arrays, meta = load_checkpoint(path)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or cfg.get("arch") not in ARCHS \
            or cfg.get("dataset", "cifar10") not in DATASETS:
        raise CheckpointError(f"{path} is not a checkpoint of train.py (no usable config)")
    neuron = {k: cfg[k] for k in NEURON_KEYS if k in cfg}
    dataset = cfg.get("dataset", "cifar10")
    try:
        model = build_model(cfg["arch"], num_classes_of(dataset), cfg.get("width", 1.0), neuron,
                            in_channels=in_channels_of(dataset))
        if cfg.get("local_blocks", 1) != 1 or cfg.get("split_at"):
            # trained block by block: the saved aux heads, attached as the local method does
            make_method("bptt", model, 1, local_blocks=cfg.get("local_blocks", 1),
                        split_at=cfg.get("split_at"))
        model.load_state_dict(section(arrays, "model"))
    except (StateDictError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit a {cfg['arch']} model: {e}") from None
    return set_conv_algo(model, conv_algo), cfg


# -- methods: 'bptt', 'rate_s', 'tbptt:K=2', 'local:N=2', 'tbptt:K=2:N=2', 'bptt:mode=s',
#    'sltt', 'sltt:K=2', 'ottt', 'bptt:pack', 'bptt:blocks', 'bptt:mode=s:recompute=2' --------
SPEC_NAMES = ("bptt", "rate", "rate_m", "rate_s", "tbptt", "local", "sltt", "ottt")
ONLINE = ("sltt", "ottt")         # one loss per step, a spatial backward after each step


class MethodSpec(NamedTuple):
    label: str            # as written
    name: str             # method name for make_method: bptt, rate_m, rate_s, tbptt, sltt, ottt
    step_mode: str        # 'm' or 's' (sltt and ottt: always 's', one step at a time)
    window: object        # K: the tbptt window, or SLTT's steps with a backward; None: all T
    local_blocks: int     # N (1: end-to-end)
    pack: bool = False    # spikes kept as bits
    recompute: object = None   # bptt: recompute window K (step mode s); None: none
    blocks: bool = False  # bptt: recompute each block in backward

    @property
    def per_step_loss(self):
        """True for the online methods: they train on (1/T) Σ_t loss_fn(out_t, y)."""
        return self.name in ONLINE

    def kwargs(self, T):
        """make_method keyword arguments beyond the defaults (K is capped at T)."""
        kw = {}
        if self.window is not None:
            kw["sltt_k" if self.name == "sltt" else "window"] = min(self.window, T)
        if self.local_blocks != 1:
            kw["local_blocks"] = self.local_blocks
        if self.pack:
            kw["pack_spikes"] = True
        if self.recompute is not None:
            kw["recompute_window"] = min(self.recompute, T)
        if self.blocks:
            kw["recompute_blocks"] = True
        return kw

    def costs(self, model, x_shape, T, split_at=None):
        """`costs.method_costs` of this method for one step on a batch of shape x_shape."""
        return method_costs(model, x_shape, T, self.name, self.step_mode, self.window,
                            self.local_blocks, split_at, recompute_window=self.recompute,
                            recompute_blocks=self.blocks)


def parse_method_spec(text):
    """'name[:key=value...][:flag...]' -> MethodSpec. Keys: K (tbptt window; sltt: steps with a
    backward, drawn at random per batch), N (local blocks), mode (m|s, bptt/tbptt/local),
    recompute (bptt in mode s: the recompute window). Flags: pack (spikes kept as bits: bptt,
    tbptt, local, sltt), blocks (bptt: recompute each block). 'local' is BPTT with local blocks
    (default N=2); 'rate' is rate_m; sltt and ottt run single-step."""
    name, *options = text.split(":")
    if name not in SPEC_NAMES:
        raise argparse.ArgumentTypeError(f"unknown method {name!r} in {text!r}; choose from "
                                         f"{', '.join(SPEC_NAMES)} (e.g. tbptt:K=2, local:N=2, "
                                         f"sltt:K=2, bptt:pack, bptt:blocks)")
    values = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        known = ("K", "N", "mode", "recompute") if eq else ("pack", "blocks")
        if key not in known or key in values:
            raise argparse.ArgumentTypeError(f"bad option {opt!r} in method {text!r}; use K=, "
                                             f"N=, mode=, recompute=, pack or blocks, once each")
        values[key] = value
    try:
        window = positive_int(values["K"]) if "K" in values else None
        blocks = positive_int(values.get("N", "2" if name == "local" else "1"))
        recompute = positive_int(values["recompute"]) if "recompute" in values else None
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"method {text!r}: K, N and recompute {e}") from None
    if "pack" in values and name not in ("bptt", "tbptt", "local", "sltt"):
        raise argparse.ArgumentTypeError(f"method {text!r}: pack is for bptt, tbptt, local and "
                                         f"sltt ({name} keeps no spikes for backward)")
    if ("blocks" in values or recompute is not None) and (name != "bptt" or blocks != 1):
        raise argparse.ArgumentTypeError(f"method {text!r}: recompute= and blocks are for bptt "
                                         f"on the whole network")
    if window is not None and name not in ("tbptt", "sltt"):
        raise argparse.ArgumentTypeError(f"method {text!r}: K= is the tbptt window or the "
                                         f"sltt backward steps")
    if blocks != 1 and name in ONLINE:
        raise argparse.ArgumentTypeError(f"method {text!r}: N= (local blocks) is not for {name}")
    mode = values.get("mode", "s" if name in ("rate_s",) + ONLINE else "m")
    if mode not in ("m", "s") or ("mode" in values and name not in ("bptt", "tbptt", "local")):
        raise argparse.ArgumentTypeError(f"method {text!r}: mode= is m or s, for bptt/tbptt/local")
    if recompute is not None and mode != "s":
        raise argparse.ArgumentTypeError(f"method {text!r}: recompute= needs mode=s (in mode m "
                                         f"batchnorm takes its statistics over all T at once)")
    base = {"local": "bptt", "rate": "rate_m"}.get(name, name)
    return MethodSpec(text, base, mode, window, blocks, "pack" in values, recompute,
                      "blocks" in values)


def method_specs(text):
    """Comma-separated method specs -> list of MethodSpec (argparse type)."""
    return [parse_method_spec(t) for t in text.split(",")]


class MethodUnavailable(Exception):
    """The method of a spec is not in this build of minirate.methods (a cell to skip)."""


def build_method(spec, model, T, **extra):
    """make_method for a spec, or MethodUnavailable naming what is missing. The online methods
    are given the per-step loss by `loss_for` at their step."""
    if spec.name not in METHODS:
        raise MethodUnavailable(f"{spec.label}: method {spec.name!r} is not registered in "
                                f"minirate.methods (available: {', '.join(METHODS)})")
    try:
        return make_method(spec.name, model, T, spec.step_mode, **spec.kwargs(T), **extra)
    except TypeError as e:                      # an option this build does not take
        raise MethodUnavailable(f"{spec.label}: {e}") from None


def loss_for(spec, loss_lambda):
    """The loss function a spec's method steps with: the per-step loss's (1 − λ_L) CE + λ_L MSE
    for sltt and ottt (train.py's --loss-lambda), plain cross-entropy for the others."""
    return ce_mse(loss_lambda) if spec.per_step_loss else cross_entropy


def split_points(method):
    """The block starts (module names) a local method reports as its `split_at` (LocalBlocks),
    or None for a whole-network method."""
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
    """--batch-size, --device, --conv-algo, --dataset, --data-dir, the event-frame options (as
    train.py names them), --out. from_checkpoint: the data options default to those in the
    checkpoint's config (see `data_source`)."""
    s.add_argument("--batch-size", type=positive_int, default=batch_size, help="samples")
    s.add_argument("--device", choices=devices(), default="cpu", help="cuda needs CuPy")
    s.add_argument("--conv-algo", choices=ALGOS, default="im2col",
                   help="3x3 stride-1 convolutions of every model the study builds: im2col, "
                        "winograd, or auto (the faster of the two, measured once per layer "
                        "shape; see minirate/layers/winograd.py)")
    own = " (default: the checkpoint's own, else %s)" % SAMPLE if from_checkpoint else ""
    s.add_argument("--dataset", choices=DATASETS, default=None if from_checkpoint else SAMPLE,
                   help=f"images or event frames{own}; {SAMPLE} ships with minirate (no "
                        f"--data-dir needed); event data feed (T, B, 2, H, W) frames")
    s.add_argument("--data-dir", default=None if from_checkpoint else "data",
                   help="folder holding the data set (cifar-10-batches-py/ for cifar10, e.g. "
                        "../shared/data/cifar10-subset; CIFAR10-DVS/ or DvsGesture/ for event "
                        "data); a folder that fails to load is an error"
                        + (" (default: the checkpoint's own)" if from_checkpoint else ""))
    g = s.add_argument_group("event data (cifar10dvs, dvsgesture)" + (
        "; default: the checkpoint's own" if from_checkpoint else ""))
    g.add_argument("--frame-size", type=positive_int, default=None,
                   help="frames resized (bilinear) to N x N (default 48)")
    g.add_argument("--split-by", choices=("count", "time"), default=None,
                   help="events into T frames by equal event count or equal time (default count)")
    g.add_argument("--event-split", default=None,
                   help="named train/test split (default: the data set's own)")
    g.add_argument("--cache-dir", default=None,
                   help="folder of the HDF5 frame cache (default: --data-dir)")
    s.add_argument("--out", default="runs/study", help="folder for the csv/json/png files")


def add_loss_option(s):
    s.add_argument("--loss-lambda", type=unit_interval, default=0.05,
                   help="λ_L of the per-step loss (1 − λ_L) CE + λ_L MSE that sltt and ottt "
                        "train on, in [0, 1] (train.py's default)")


def data_source(a, cfg=None):
    """The DataSource of a command line: --dataset / --data-dir and the event options where
    given, else the checkpoint config's (train.py saves them all), else the bundled sample and
    train.py's defaults."""
    cfg = cfg or {}
    dataset = a.dataset or cfg.get("dataset") or SAMPLE
    if dataset not in DATASETS:
        raise StudyError(f"data set {dataset!r} is not one of {', '.join(DATASETS)}")
    pick = lambda key, default: next(  # noqa: E731
        v for v in (getattr(a, key, None), cfg.get(key), default) if v is not None)
    source = DataSource(dataset, pick("data_dir", "data"), int(pick("frame_size", 48)),
                        pick("split_by", "count"), pick("event_split", ""),
                        pick("cache_dir", ""))
    if not source.events and any(getattr(a, k, None) is not None for k in EVENT_KEYS):
        raise StudyError("--frame-size, --split-by, --event-split and --cache-dir are for event "
                         "data (--dataset cifar10dvs or dvsgesture)")
    return source
