"""Train a spiking neural network on CIFAR with a chosen training method.

    python train.py --method rate --dataset cifar10 --arch resnet18 --T 4

Order of this file: config, model, output folder, data, optimizer, schedule, evaluate, resume,
loop (with its checkpoints).
Every option is listed by `python train.py --help`. Outputs in --out: last.npz and best.npz
(atomic checkpoints with the resolved config), metrics.jsonl (one JSON line per epoch) and
config.json. Errors in what was asked for (a missing data set, a bad checkpoint, an impossible
option) end the run with one line on stderr and exit status 1 (2 for a malformed command line).
"""
import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    print("\ninterrupted while starting; nothing was saved", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":     # Ctrl-C while the modules below load: one line, not a traceback
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minirate.backend import DeviceError, devices, get_xp, synchronize, to_numpy
from minirate.cli import (ArgumentParser, DefaultsHelpFormatter, at_least_one, below_one,
                          finite_float,
                          nonnegative_float, nonnegative_int, positive_float, positive_int,
                          unit_interval)
from minirate.checkpoint import (CheckpointError, append_jsonl, first_non_finite,
                                 load_checkpoint, read_jsonl, save_checkpoint)
from minirate.data.augment import PIPELINES
from minirate.data.cifar import SPECS, DatasetError, load_cifar
from minirate.data.events import EVENT_DATASETS, SPLIT_NAMES, event_loaders
from minirate.data.events.datasets import SPLIT_ORDERS
from minirate.data.events.loader import PIPELINES as EVENT_PIPELINES
from minirate.data.events.ottt_transform import OTTT_SIZE
from minirate.data.imagenet import ImageFolderLoader, load_imagenet
from minirate.data.loader import Loader
from minirate.distributed import DistributedError, fail, sync_batchnorm, world
from minirate.interrupt import GracefulStop
from minirate.layers.base import StateDictError
from minirate.layers.batchnorm import BatchStatisticsError
from minirate.layers.dropout import sequence_counts, set_sequence_counts
from minirate.layers.lif import RESETS, SURROGATES
from minirate.layers.winograd import ALGOS, set_conv_algo
from minirate.losses import ce_mse, cross_entropy
from minirate.methods import LOCAL, METHODS, PACKING, UPDATES, make_method, predict
from minirate.methods.common import is_time_varying
from minirate.methods.local import resolve_splits
from minirate.memory import MemoryShortage, check_step, gib, guard, lower_with
from minirate.models import ARCHS, build_model, input_size_problem
from minirate.optim import SGD, Adam, clip_grad_norm, cosine_lr
from minirate import recipes
from minirate.progress import Progress
from minirate.rundir import (RunDirError, RunLock, holds_run, prepare_out,
                             remove_stale_temporaries)

# -- config -------------------------------------------------------------------------------
DATASETS = {"cifar10": 10, "cifar100": 100, "cifar10-sample": 10,   # name -> classes
            "imagenet": None,                                          # None: its folders
            "cifar10dvs": 10, "dvsgesture": 11}        # event data: T frames of 2 polarities
DEFAULTS = dict(
    method="bptt", dataset="cifar10", arch="resnet18", T=4, step_mode="m", width=1.0,
    epochs=300, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4,
    warmup_epochs=0, grad_clip=0.0, scale_grad_by_T=True,
    decay=0.2, threshold=1.0, reset="soft", v_reset=0.0, detach_reset=True,
    surrogate="sigmoid", alpha=None,
    crop=True, flip=True, cutout=0, autoaugment=False,
    data_dir="data", download=True, out="runs/default", resume="", overwrite=False,
    max_steps=0, save_every=0,
    eval_batch_size=256, seed=0, device="cpu", dtype="float32", progress=True, conv_algo="im2col",
    sync_bn=True, mpi_timeout=300.0, workers=4, image_size=224,
    frame_size=48, split_by="count", event_split="", roll=5, cache_dir="",
    loss=None, loss_lambda=0.05,            # loss None: mean, or per-step for sltt and ottt
    sltt_k=None, ottt_update="accumulate",  # sltt_k None: every step gets a backward
    window=None, update="per-batch",        # window None: K = T
    local_blocks=1, split_at=None,
    pack_spikes=False, recompute_window=None, recompute_blocks=False,   # exact, less memory
    tau=None, mse_target="onehot", neuron_dropout=0.0, lr_step="batch",  # tau None: --decay
    cifar_pipeline="minirate", event_pipeline="minirate", event_split_order="number",
    recipe=None,                            # a paper's options (minirate/recipes/), before these
    init_from="",                           # weights to start from (a checkpoint), nothing else
)
ONLINE = ("sltt", "ottt")                   # methods that train only with the per-step loss
# What a checkpoint must agree on to be resumed: the network and how it is trained.
STRUCTURAL = ("method", "dataset", "arch", "T", "step_mode", "width", "decay", "threshold",
              "reset", "v_reset", "detach_reset", "surrogate", "alpha", "dtype",
              "loss", "loss_lambda", "sltt_k", "ottt_update",
              "window", "update", "local_blocks", "split_at",
              "mse_target", "neuron_dropout", "cifar_pipeline")
EVENT_STRUCTURAL = ("frame_size", "split_by", "event_split",   # also, for event data sets
                    "event_pipeline", "event_split_order")
# What a checkpoint's saved position means: which batches come next, in which order.
DATA_ORDER = ("batch_size", "seed")
# Checkpoint format: 1 = unversioned (older minirate, config without the options added since),
# 2 = "format" in the meta and every key above in its config, 3 = the keys of SINCE_3 too.
CHECKPOINT_FORMAT = 3
SINCE_3 = ("mse_target", "neuron_dropout", "cifar_pipeline", "event_pipeline",
           "event_split_order")
REQUIRED = ("method", "dataset", "arch", "T", "step_mode", "width", "decay", "threshold", "reset",
            "v_reset", "detach_reset", "surrogate", "alpha", "dtype") + DATA_ORDER   # since 1
# What a format-1 checkpoint without a key trained with: the default of the minirate that wrote
# it. None of these defaults has changed, except that --loss arrived with sltt and ottt, and
# everything before them trained on the mean loss.
OLD_DEFAULTS = dict({k: DEFAULTS[k] for k in STRUCTURAL + EVENT_STRUCTURAL},
                    loss=lambda saved: "per-step" if saved.get("method") in ONLINE else "mean")


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 1."""


def given_options(argv):
    """Option dests the words in argv set (`--no-flip` sets flip, `--lr=0.1` lr)."""
    dests = set()
    for word in argv:
        if word.startswith("--"):
            name = word[2:].split("=")[0].replace("-", "_")
            dests.add(name[3:] if name.startswith("no_") and name[3:] in DEFAULTS else name)
    return dests


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                       formatter_class=DefaultsHelpFormatter)
    d = DEFAULTS
    on_off = argparse.BooleanOptionalAction
    g = p.add_argument_group("paper recipes")
    g.add_argument("--recipe", default=d["recipe"],
                   help="set every option as a paper's code does (the options given here win); "
                        "see --list-recipes")
    g.add_argument("--list-recipes", action="store_true",
                   help="print the recipes: paper, data set, architecture, T, epochs, batch")
    g = p.add_argument_group("method and model")
    g.add_argument("--method", choices=METHODS, default=d["method"],
                   help="training method (rate = rate_m)")
    g.add_argument("--dataset", choices=tuple(DATASETS), default=d["dataset"],
                   help="cifar10-sample: a real sample bundled with minirate (no download)")
    g.add_argument("--arch", choices=ARCHS, default=d["arch"], help="network")
    g.add_argument("--T", type=positive_int, default=d["T"], help="time steps")
    g.add_argument("--step-mode", choices=("m", "s"), default=d["step_mode"],
                   help="bptt, tbptt: m = all steps per layer at once (BN over T*B), "
                        "s = one step at a time (BN per step)")
    g.add_argument("--width", type=positive_float, default=d["width"], help="channel multiplier")
    g.add_argument("--window", type=positive_int, default=d["window"],
                   help="tbptt: window K, 1 <= K <= T (None: K = T, plain BPTT)")
    g.add_argument("--update", choices=UPDATES, default=d["update"],
                   help="tbptt: one optimizer step per batch, or after every window "
                        "(same --lr, see methods/tbptt.py)")
    g.add_argument("--local-blocks", type=positive_int, default=d["local_blocks"],
                   help="train the network as N blocks, each from its own classifier "
                        "(default block starts per --arch: see minirate/models.py)")
    g.add_argument("--split-at", type=module_names,
                   default=d["split_at"],
                   help="explicit block starts by module name, e.g. layer2,layer3")
    g.add_argument("--loss", choices=("mean", "per-step"), default=d["loss"],
                   help="mean: cross-entropy of the time-averaged output; per-step: the mean "
                        "over steps of (1 - λ_L) CE + λ_L MSE(one-hot) of each step's output "
                        "(None: mean; per-step for sltt and ottt)")
    g.add_argument("--loss-lambda", type=unit_interval, default=d["loss_lambda"],
                   help="λ_L of the per-step loss, in [0, 1]")
    g.add_argument("--mse-target", type=mse_target, default=d["mse_target"],
                   help="per-step loss: the MSE term's target, onehot or a number every logit "
                        "is pulled towards (SLTT's CIFAR recipes: 1.0)")
    g.add_argument("--sltt-k", type=positive_int, default=d["sltt_k"],
                   help="sltt: backward at K of the T steps, drawn at random per batch "
                        "(None: all T)")
    g.add_argument("--ottt-update", choices=("accumulate", "per-step"), default=d["ottt_update"],
                   help="ottt: one optimizer step per batch (OTTT_A) or after every time step "
                        "(OTTT_O)")
    g.add_argument("--neuron-dropout", type=unit_below_one, default=d["neuron_dropout"],
                   help="dropout after spiking layers, one mask per sample for all T steps, "
                        "where the architecture's authors put it (vgg11_ws, vgg11_bn)")
    g.add_argument("--pack-spikes", action=on_off, default=d["pack_spikes"],
                   help="bptt, tbptt, sltt: keep spikes for backward as bits (same gradients)")
    g.add_argument("--recompute-window", type=positive_int, default=d["recompute_window"],
                   help="bptt --step-mode s: keep the neuron state every K steps and recompute "
                        "each window in backward (same gradients)")
    g.add_argument("--recompute-blocks", action=on_off, default=d["recompute_blocks"],
                   help="bptt: keep only each block's input and recompute the block in "
                        "backward (same gradients)")
    g = p.add_argument_group("neuron")
    g.add_argument("--tau", type=at_least_one, default=d["tau"],
                   help="membrane time constant τ >= 1: sets --decay to 1 - 1/τ (in float64)")
    g.add_argument("--decay", type=unit_interval, default=None,
                   help=f"LIF leak λ in [0, 1]: u_t = λ u⁺_{{t-1}} + I_t (None: {d['decay']}, "
                        f"or 1 - 1/τ with --tau)")
    g.add_argument("--threshold", type=positive_float, default=d["threshold"],
                   help="firing threshold θ")
    g.add_argument("--reset", choices=RESETS, default=d["reset"],
                   help="soft: subtract θ; hard: set to --v-reset")
    g.add_argument("--v-reset", type=finite_float, default=d["v_reset"],
                   help="hard reset value, below the threshold")
    g.add_argument("--detach-reset", action=on_off, default=d["detach_reset"],
                   help="treat the reset as a constant in backward")
    g.add_argument("--surrogate", choices=SURROGATES, default=d["surrogate"],
                   help="surrogate derivative of the spike")
    g.add_argument("--alpha", type=positive_float, default=d["alpha"],
                   help="surrogate sharpness/width (None: 4 sigmoid, 2 atan, 1 others)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=d["epochs"], help="epochs in all")
    g.add_argument("--batch-size", type=positive_int, default=d["batch_size"],
                   help="training batch size")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=d["optimizer"], help="optimizer")
    g.add_argument("--lr", type=positive_float, default=d["lr"], help="peak learning rate")
    g.add_argument("--momentum", type=below_one, default=d["momentum"],
                   help="SGD momentum in [0, 1)")
    g.add_argument("--nesterov", action=on_off, default=d["nesterov"],
                   help="Nesterov momentum (SGD with momentum > 0)")
    g.add_argument("--wd", type=nonnegative_float, default=d["wd"],
                   help="weight decay on conv/linear weights only")
    g.add_argument("--warmup-epochs", type=nonnegative_float, default=d["warmup_epochs"],
                   help="linear warm-up before the cosine schedule, at most --epochs")
    g.add_argument("--lr-step", choices=("batch", "epoch"), default=d["lr_step"],
                   help="the schedule moves after every batch, or once per epoch (then "
                        "--warmup-epochs counts whole epochs)")
    g.add_argument("--grad-clip", type=nonnegative_float, default=d["grad_clip"],
                   help="max global gradient norm (0 = off)")
    g.add_argument("--scale-grad-by-T", action=on_off, default=d["scale_grad_by_T"],
                   help="rate methods: multiply the loss gradient by 1/T as the published recipe")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=d["data_dir"],
                   help="folder that holds (or will hold) the data set")
    g.add_argument("--download", action=on_off, default=d["download"],
                   help="download the data set when missing")
    g.add_argument("--crop", action=on_off, default=d["crop"], help="random crop, 4-px padding")
    g.add_argument("--flip", action=on_off, default=d["flip"], help="random horizontal flip")
    g.add_argument("--cutout", type=nonnegative_int, default=d["cutout"],
                   help="Cutout size in px, at most 32 (0 = off)")
    g.add_argument("--autoaugment", action=on_off, default=d["autoaugment"],
                   help="AutoAugment CIFAR-10 policy")
    g.add_argument("--cifar-pipeline", choices=PIPELINES, default=d["cifar_pipeline"],
                   help="CIFAR augmentation and normalisation: minirate's, or exactly "
                        "rate-BP's code (see minirate/data/augment.py)")
    g.add_argument("--workers", type=nonnegative_int, default=d["workers"],
                   help="imagenet: JPEG-decoding processes per rank (0 = in the training process)")
    g.add_argument("--image-size", type=positive_int, default=d["image_size"],
                   help="imagenet: crop size; evaluation resizes the shorter side to size*256/224")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=d["out"], help="folder for checkpoints and metrics")
    g.add_argument("--resume", default=d["resume"], help="checkpoint path, or 'auto' = OUT/last.npz")
    g.add_argument("--init-from", default=d["init_from"],
                   help="a checkpoint whose weights a new run starts from (a fresh optimizer, "
                        "schedule and position; e.g. a recipe's second stage)")
    g.add_argument("--overwrite", action=on_off, default=d["overwrite"],
                   help="start a new run in an --out that already holds one, replacing it")
    g.add_argument("--max-steps", type=nonnegative_int, default=d["max_steps"],
                   help="stop after this many optimizer steps in all (0 = no limit)")
    g.add_argument("--save-every", type=nonnegative_int, default=d["save_every"],
                   help="also save last.npz every N steps (0 = end of epoch only)")
    g.add_argument("--eval-batch-size", type=positive_int, default=d["eval_batch_size"],
                   help="evaluation batch size")
    g.add_argument("--seed", type=nonnegative_int, default=d["seed"],
                   help="seed of the weights, the data order and the augmentation")
    g.add_argument("--device", choices=devices(), default=d["device"], help="cpu or cuda")
    g.add_argument("--conv-algo", choices=ALGOS, default=d["conv_algo"],
                   help="3x3 stride-1 convolutions: im2col, winograd, or auto (the faster, "
                        "measured per layer shape on first use)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"],
                   help="floating-point type of weights and activations")
    g.add_argument("--progress", action=on_off, default=d["progress"], help="progress bar")
    g = p.add_argument_group("event data (cifar10dvs, dvsgesture)")
    g.add_argument("--frame-size", type=positive_int, default=d["frame_size"],
                   help="frames resized (bilinear) to N x N")
    g.add_argument("--split-by", choices=("count", "time"), default=d["split_by"],
                   help="events into T frames by equal event count or equal time")
    g.add_argument("--event-split", default=d["event_split"],
                   help="named train/test split: cifar10dvs 9:1 (default) or 8:2 per class; "
                        "dvsgesture users")
    g.add_argument("--roll", type=nonnegative_int, default=d["roll"],
                   help="random circular shift of up to N px in x and y, below --frame-size "
                        "(0 = off)")
    g.add_argument("--event-pipeline", choices=EVENT_PIPELINES, default=d["event_pipeline"],
                   help="minirate: --flip and --roll; ottt: OTTT's resize to 48, pad 4, one crop "
                        "for all frames, its normalisation (use --frame-size 128)")
    g.add_argument("--event-split-order", choices=SPLIT_ORDERS, default=d["event_split_order"],
                   help="cifar10dvs: the split's samples per class by file number, or by file "
                        "name as SpikingJelly takes them")
    g.add_argument("--cache-dir", default=d["cache_dir"],
                   help="folder of the HDF5 frame cache (default: --data-dir)")
    g = p.add_argument_group("data-parallel (mpirun -n N python train.py ...)")
    g.add_argument("--sync-bn", action=on_off, default=d["sync_bn"],
                   help="batchnorm statistics over the global batch, summed over all ranks")
    g.add_argument("--mpi-timeout", type=positive_float, default=d["mpi_timeout"],
                   help="seconds a rank waits for the others in a reduction before giving up")
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = vars(p.parse_args(argv))
    if cfg.pop("list_recipes"):
        try:
            print(recipes.listing(), flush=True)
        except BrokenPipeError:           # e.g. piped into head
            sys.stdout = None
        sys.exit(0)
    if cfg["recipe"]:                     # the recipe's words first: the command line's win
        try:
            words = recipes.command_line(cfg["recipe"], given_options(argv))
        except recipes.RecipeError as e:
            p.error(f"argument --recipe: {e}")
        cfg = vars(p.parse_args(words + argv))
        cfg.pop("list_recipes")
        for key, why in recipes.load(cfg["recipe"])["requires"].items():
            if not cfg[key]:
                p.error(f"--recipe {cfg['recipe']} needs --{key.replace('_', '-')}: {why}")
    if cfg["tau"] is not None and cfg["decay"] is not None:
        p.error("arguments --tau and --decay both set the leak; give one")
    if cfg["decay"] is None:                            # λ = 1 − 1/τ in float64
        cfg["decay"] = d["decay"] if cfg["tau"] is None else 1.0 - 1.0 / cfg["tau"]
    why = option_conflict(cfg)
    if why:
        p.error(why)
    if cfg["loss"] is None:
        cfg["loss"] = "per-step" if cfg["method"] in ONLINE else "mean"
    return cfg


def mse_target(text):
    """--mse-target: 'onehot', or a finite number (kept as a float)."""
    if text == "onehot":
        return text
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"onehot or a number, got {text!r}") from None


def unit_below_one(text):
    """A probability in [0, 1)."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def module_names(text):
    """--split-at: comma-separated module names, at least one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"names no module: {text!r}")
    return names


def option_conflict(cfg):
    """What single-option ranges cannot say: limits that involve two options. None if fine."""
    if cfg["nesterov"] and (cfg["optimizer"] != "sgd" or cfg["momentum"] == 0):
        return "argument --nesterov: needs --optimizer sgd with --momentum > 0"
    if cfg["warmup_epochs"] > cfg["epochs"]:
        return (f"argument --warmup-epochs: {cfg['warmup_epochs']} is more than "
                f"--epochs {cfg['epochs']}")
    if cfg["reset"] == "hard" and cfg["v_reset"] >= cfg["threshold"]:
        return (f"argument --v-reset: {cfg['v_reset']} must lie below --threshold "
                f"{cfg['threshold']}, or every neuron fires at every step after its first spike")
    if cfg["cutout"] > 32:
        return f"argument --cutout: {cfg['cutout']} px is larger than the 32-px image"
    if not cfg["out"].strip():
        return "argument --out: must name a folder"
    if cfg["dataset"] == "imagenet" and not (cfg["crop"] and cfg["flip"]) or (
            cfg["dataset"] == "imagenet" and (cfg["cutout"] or cfg["autoaugment"])):
        return ("--crop, --flip, --cutout and --autoaugment are CIFAR's; ImageNet training always "
                "uses RandomResizedCrop and a flip")
    if cfg["sltt_k"] is not None and cfg["method"] != "sltt":
        return "argument --sltt-k: only for --method sltt"
    if cfg["sltt_k"] is not None and cfg["sltt_k"] > cfg["T"]:
        return f"argument --sltt-k: must be at most --T {cfg['T']}, got {cfg['sltt_k']}"
    if cfg["ottt_update"] != DEFAULTS["ottt_update"] and cfg["method"] != "ottt":
        return "argument --ottt-update: only for --method ottt"
    per_step = cfg["loss"] == "per-step" or (cfg["loss"] is None and cfg["method"] in ONLINE)
    if cfg["mse_target"] != "onehot" and not per_step:
        return "argument --mse-target: the target of the per-step loss's MSE term (--loss per-step)"
    if cfg["lr_step"] == "epoch" and cfg["warmup_epochs"] != int(cfg["warmup_epochs"]):
        return (f"argument --warmup-epochs: with --lr-step epoch the warm-up is whole epochs, "
                f"got {cfg['warmup_epochs']:g}")
    if cfg["cifar_pipeline"] != "minirate" and cfg["dataset"] not in ("cifar10", "cifar100",
                                                                      "cifar10-sample"):
        return "argument --cifar-pipeline: for the CIFAR data sets"
    if (cfg["event_pipeline"] != "minirate" or cfg["event_split_order"] != "number") and \
            cfg["dataset"] != "cifar10dvs":
        return "arguments --event-pipeline and --event-split-order: for --dataset cifar10dvs"
    if cfg["method"] in ONLINE and cfg["loss"] == "mean":
        return f"argument --loss: {cfg['method']} trains with one loss per step; use per-step"
    if cfg["method"] != "tbptt" and (cfg["window"] is not None or cfg["update"] != "per-batch"):
        return "arguments --window and --update need --method tbptt"
    if cfg["window"] is not None and cfg["window"] > cfg["T"]:
        return f"argument --window: must be at most --T {cfg['T']}, got {cfg['window']}"
    local = cfg["local_blocks"] > 1 or cfg["split_at"]
    if cfg["pack_spikes"] and cfg["method"] not in PACKING:
        return (f"argument --pack-spikes: {cfg['method']} keeps firing rates or traces for "
                f"backward, not spikes; packing is for {', '.join(PACKING)}")
    recompute = cfg["recompute_window"] is not None or cfg["recompute_blocks"]
    if recompute and (cfg["method"] != "bptt" or local):
        return "arguments --recompute-window/--recompute-blocks: for bptt on the whole network"
    if cfg["recompute_window"] is not None and cfg["step_mode"] != "s":
        return ("argument --recompute-window: needs --step-mode s (in step mode m batchnorm "
                "takes its statistics over all T steps at once)")
    if cfg["recompute_window"] is not None and cfg["recompute_window"] > cfg["T"]:
        return (f"argument --recompute-window: must be at most --T {cfg['T']}, got "
                f"{cfg['recompute_window']}")
    if local and cfg["method"] not in LOCAL:
        return f"arguments --local-blocks/--split-at: for {', '.join(LOCAL)}, not {cfg['method']}"
    if cfg["loss"] == "per-step" and (cfg["method"] == "tbptt" or local):
        return ("argument --loss per-step: tbptt and local blocks train with a loss per window "
                "and per block")
    if cfg["step_mode"] != "m" and cfg["method"] not in ("bptt", "tbptt"):
        return (f"argument --step-mode: for bptt and tbptt ({cfg['method']} has its own: "
                f"rate_m / rate_s choose the spike pass, sltt and ottt step one at a time)")
    try:                          # channel counts, and block starts: the architecture's layout
        probe = build_model(cfg["arch"], 10, cfg["width"], in_channels=sample_shape(cfg)[0],
                            dropout=cfg["neuron_dropout"])
    except ValueError as e:
        return str(e)
    if local:
        try:
            resolve_splits(probe, cfg["local_blocks"], cfg["split_at"])
        except ValueError as e:
            return f"argument --{'split-at' if cfg['split_at'] else 'local-blocks'}: {e}"
    if not cfg["roll"] < cfg["frame_size"]:
        return f"argument --roll: must be below --frame-size {cfg['frame_size']}, got {cfg['roll']}"
    events = cfg["dataset"] in EVENT_DATASETS
    if cfg["arch"] == "vggsnn_dvs" and (not events or cfg["frame_size"] != 48):
        return ("--arch vggsnn_dvs takes 48x48 event frames: --dataset cifar10dvs or dvsgesture "
                "with --frame-size 48")
    channels, size, size_option = sample_shape(cfg)    # a shape pass, before any data is read
    why = input_size_problem(probe, cfg["arch"], channels, size, size_option)
    if why:
        return why
    if events and (cfg["cutout"] or cfg["autoaugment"]):
        return "--cutout and --autoaugment are for images; event frames use --flip and --roll"
    if cfg["event_split"] and cfg["event_split"] not in SPLIT_NAMES.get(cfg["dataset"], ()):
        names = ", ".join(SPLIT_NAMES.get(cfg["dataset"], ())) or "image data sets have none"
        return (f"argument --event-split: {cfg['event_split']!r} is not a split of "
                f"{cfg['dataset']} ({names})")
    return None


def sample_shape(cfg):
    """(channels, size, where the size comes from) of one input sample, square size x size."""
    if cfg["dataset"] in EVENT_DATASETS and cfg["event_pipeline"] == "ottt":
        return 2, OTTT_SIZE, f"event frames, resized to {OTTT_SIZE} by --event-pipeline ottt"
    if cfg["dataset"] in EVENT_DATASETS:
        return 2, cfg["frame_size"], f"event frames, --frame-size {cfg['frame_size']}"
    if cfg["dataset"] == "imagenet":
        return 3, cfg["image_size"], f"--image-size {cfg['image_size']}"
    return 3, 32, "CIFAR images"


def weight_sum(params):
    """Σ of all weights in float64: finite exactly when every weight is finite."""
    return float(sum(p.sum(dtype="float64") for _, p, _, _ in params))


def saved_config(meta, cfg, path):
    """The config a checkpoint was trained with, completed for checkpoints of an older minirate.

    Format 1 (no "format" in the meta) is minirate before checkpoints were versioned: its config
    lacks the options added since. Each of those is filled with the value the older minirate
    trained with (OLD_DEFAULTS); the keys every checkpoint has always held (REQUIRED) are never
    guessed. From format 2 on the config holds every key. Returns (config, note or None) and
    raises CheckpointError for a config that cannot be completed.
    """
    version = meta.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"cannot resume from {path}: its checkpoint format {version!r} is "
                              f"not a version number")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"cannot resume from {path}: it was written by a newer minirate "
                              f"(checkpoint format {version}; this one reads formats 1 to "
                              f"{CHECKPOINT_FORMAT})")
    saved = dict(meta["config"])
    keys = STRUCTURAL + DATA_ORDER + (EVENT_STRUCTURAL if cfg["dataset"] in EVENT_DATASETS
                                      else ())
    missing = [k for k in keys if k not in saved]
    cannot = [k for k in missing if k in REQUIRED or version > (2 if k in SINCE_3 else 1)]
    if cannot:
        raise CheckpointError(f"cannot resume from {path}: its config (checkpoint format "
                              f"{version}) has no {', '.join(_option(k) for k in cannot)}")
    if not missing:
        return saved, None
    for k in missing:
        saved[k] = OLD_DEFAULTS[k](saved) if callable(OLD_DEFAULTS[k]) else OLD_DEFAULTS[k]
    filled = ", ".join(f"{_option(k)} {saved[k]}" for k in missing)
    return saved, (f"{path} comes from an older minirate (checkpoint format {version}) that did "
                   f"not record every option; taking what it trained with: {filled}")


def _option(key):
    return "--" + key.replace("_", "-")


def structural_mismatch(saved, cfg):
    keys = STRUCTURAL + DATA_ORDER
    if cfg["dataset"] in EVENT_DATASETS:
        keys += EVENT_STRUCTURAL
    for k in keys:
        if saved.get(k, DEFAULTS.get(k)) != cfg[k]:
            what = "was trained with" if k in STRUCTURAL else "saved its position for"
            return (f"checkpoint {what} --{k.replace('_', '-')} {saved.get(k)}, "
                    f"this run asks for {cfg[k]}")
    return None


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


def position_problem(pos, steps_per_epoch):
    """Why a checkpoint's saved position cannot be a position in this data set, or None.
    (Whether this run's --epochs reach that far is asked separately.)"""
    ints = ("epoch", "batch", "step", "correct", "seen")
    later = ("images", "kept_bytes")      # absent from checkpoints of older minirate
    for k in ints + later:
        if k in later and k not in pos:
            continue
        if not isinstance(pos.get(k), int) or isinstance(pos.get(k), bool) or pos[k] < 0:
            return f"position field {k!r} is {pos.get(k)!r}, expected an integer >= 0"
    for k in ("best_acc", "loss_sum", "train_seconds"):
        if k == "train_seconds" and k not in pos:
            continue
        v = pos.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            return f"position field {k!r} is {v!r}, expected a finite number >= 0"
    if pos["best_acc"] > 1 or pos["correct"] > pos["seen"]:
        return "its accuracy figures are impossible"
    if pos["batch"] > steps_per_epoch:
        return (f"it stands at batch {pos['batch']} of an epoch, beyond this data set's "
                f"{steps_per_epoch} steps per epoch")
    if pos["step"] != pos["epoch"] * steps_per_epoch + pos["batch"]:
        return (f"its step {pos['step']} does not match epoch {pos['epoch'] + 1}, "
                f"batch {pos['batch']} at {steps_per_epoch} steps per epoch")
    return None


def main(argv=None):
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)   # see __main__ below
    cfg = parse_args(argv)
    np.seterr(all="ignore")   # divergence is detected below and reported once, with its step
    comm = world(cfg["mpi_timeout"])     # one process unless started by mpirun -n N, N > 1
    lead = comm.rank == 0                # only rank 0 prints and writes files

    def log(*args, **kwargs):
        if lead:
            print(*args, **kwargs, flush=True)

    log("config:", json.dumps(cfg, sort_keys=True))
    xp = get_xp(cfg["device"])
    reduction = comm.use_device(xp)      # under MPI on GPUs: this rank's GPU, NCCL or host MPI
    if reduction:
        log(reduction)
    dtype = np.dtype(cfg["dtype"])

    # -- data -------------------------------------------------------------------------------
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
    steps_per_epoch = len(train_loader)

    # -- model ----------------------------------------------------------------------------------
    neuron = dict(decay=cfg["decay"], threshold=cfg["threshold"], reset=cfg["reset"],
                  v_reset=cfg["v_reset"], detach_reset=cfg["detach_reset"],
                  surrogate=cfg["surrogate"], alpha=cfg["alpha"])
    try:
        model = build_model(cfg["arch"], num_classes, cfg["width"], neuron, cfg["seed"],
                            in_channels=2 if cfg["dataset"] in EVENT_DATASETS else 3,
                            dropout=cfg["neuron_dropout"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    model.to(xp, dtype)
    set_conv_algo(model, cfg["conv_algo"])
    if cfg["sync_bn"]:
        sync_batchnorm(model, comm)
    method = make_method(cfg["method"], model, cfg["T"], cfg["step_mode"], cfg["scale_grad_by_T"],
                         per_step_loss=cfg["loss"] == "per-step", sltt_k=cfg["sltt_k"],
                         ottt_update=cfg["ottt_update"], seed=cfg["seed"],
                         window=cfg["window"], update=cfg["update"],
                         local_blocks=cfg["local_blocks"], split_at=cfg["split_at"],
                         pack_spikes=cfg["pack_spikes"], recompute_window=cfg["recompute_window"],
                         recompute_blocks=cfg["recompute_blocks"])
    loss_fn = (ce_mse(cfg["loss_lambda"], cfg["mse_target"]) if cfg["loss"] == "per-step"
               else cross_entropy)
    update_each_step = getattr(method, "update_each_step", False)     # OTTT_O
    # a step that clearly cannot fit in memory is refused now; one that runs out later ends with
    # the same line (minirate/memory.py)
    channels, size, _ = sample_shape(cfg)
    batch = (cfg["batch_size"] // comm.size, channels, size, size)      # this rank's share
    lower = lower_with(cfg["method"], cfg["window"], cfg["dtype"], cfg["method"] in LOCAL,
                       comm.size)
    need, free = check_step(model, ((cfg["T"],) if cfg["dataset"] in EVENT_DATASETS else ())
                            + batch, cfg["T"], cfg["method"], xp, lower, cfg["step_mode"],
                            cfg["window"], cfg["local_blocks"], cfg["split_at"],
                            2 if cfg["optimizer"] == "adam" else int(cfg["momentum"] > 0),
                            pack_spikes=cfg["pack_spikes"], recompute_window=cfg["recompute_window"],
                            recompute_blocks=cfg["recompute_blocks"])
    method.step = guard(method.step, f" (estimated: at least {gib(need['total'])}"
                        + (f"; {gib(free[0])} available before training)" if free else ")"), lower)
    n_params = sum(int(p.size) for _, p, _, _ in model.parameters())
    log(f"model: {cfg['arch']} ({n_params:,} parameters), method {cfg['method']}, T={cfg['T']}, "
        f"{title}: {n_train} training and {n_test} test samples, {steps_per_epoch} "
        f"steps/epoch, device {cfg['device']}")
    if not comm.alone:
        log(f"data-parallel: {comm.size} rank{'s' if comm.size > 1 else ''}, "
            f"{cfg['batch_size'] // comm.size} images each "
            f"per step, batchnorm {'synchronised' if cfg['sync_bn'] else 'per rank'}")

    # -- output folder: one run at a time, never replaced by accident (rank 0 alone writes) ---
    out = cfg["out"]
    last_path, best_path = os.path.join(out, "last.npz"), os.path.join(out, "best.npz")
    metrics_path = os.path.join(out, "metrics.jsonl")
    resume = cfg["resume"]
    if resume == "auto":
        resume = last_path if os.path.exists(last_path) else ""
        if not resume:
            log(f"resume auto: no checkpoint in {out}, starting fresh")
    # a checkpoint of this folder continues its run; one from elsewhere would replace it
    resume_here = bool(resume) and (os.path.realpath(os.path.dirname(os.path.abspath(resume)))
                                     == os.path.realpath(out))
    if lead:
        prepare_out(out)
        lock = RunLock(out)
        if lock.previous_owner:
            log(f"took over the stale lock of a run that is no longer running "
                f"({lock.previous_owner})")
        if holds_run(out) and not resume and not cfg["overwrite"]:
            if cfg["resume"] == "auto":      # e.g. killed between its first best and last save
                raise UsageError(f"{out} holds a run but no last.npz to continue it from; "
                                 f"resume from another checkpoint with --resume PATH, or "
                                 f"replace the run with --overwrite")
            raise UsageError(f"{out} already holds a run; continue it with --resume auto, "
                             f"or replace it with --overwrite")

    # -- optimizer ------------------------------------------------------------------------------
    params = model.parameters()
    if cfg["optimizer"] == "sgd":
        opt = SGD(params, cfg["lr"], cfg["momentum"], cfg["nesterov"], cfg["wd"])
    else:
        opt = Adam(params, cfg["lr"], weight_decay=cfg["wd"])

    # -- schedule: cosine over all steps, optional linear warm-up -------------------------------
    total_steps = cfg["epochs"] * steps_per_epoch
    warmup_steps = int(cfg["warmup_epochs"] * steps_per_epoch)

    def lr_at(step):
        if cfg["lr_step"] == "epoch":        # as a scheduler stepped once per epoch
            return cosine_lr(cfg["lr"], step // steps_per_epoch, cfg["epochs"],
                             int(cfg["warmup_epochs"]))
        return cosine_lr(cfg["lr"], step, total_steps, warmup_steps)

    grad_norms = []                 # of the optimizer steps in this batch (T of them for OTTT_O)

    def update():
        comm.average_gradients(params)                    # all ranks: the same gradient
        grad_norms.append(clip_grad_norm(params, cfg["grad_clip"] or math.inf))
        opt.step()
        model.zero_grad()

    # -- evaluate ---------------------------------------------------------------------------------
    def evaluate(epoch, stop):
        model.eval()
        correct = n = 0
        bar = Progress(len(test_loader), f"eval   {epoch}/{cfg['epochs']}",
                       enabled=cfg["progress"] and lead)
        for i, (xb, yb) in enumerate(test_loader.iter_epoch(0), start=1):
            if stop.requested:
                break
            xb, yb = shard(xb), shard(yb)                # each rank its part of the test set
            if len(yb):
                logits = predict(model, xp.asarray(xb, dtype=dtype), cfg["T"])
                correct += int((to_numpy(logits).argmax(1) == yb).sum())
                n += len(yb)
            bar.update(i, acc=correct / max(n, 1))
        bar.close()
        model.train()
        correct, n = comm.sum_numbers(correct, n)
        return correct / max(n, 1)

    # -- resume: every check comes before the first change to a file in --out ------------------
    pos = dict(epoch=0, batch=0, step=0, best_acc=0.0, loss_sum=0.0, correct=0, seen=0,
               images=0, train_seconds=0.0,     # this epoch's training so far, for its img/s
               kept_bytes=0)                    # bytes kept for backward in the last step
    notes = []
    if cfg["init_from"] and not resume:     # a resumed run has its own weights
        arrays, meta = load_checkpoint(cfg["init_from"])
        try:
            model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        except StateDictError as e:
            raise CheckpointError(f"--init-from {cfg['init_from']} does not fit this model: "
                                  f"{e}") from None
        bad = first_non_finite({k: v for k, v in arrays.items() if k.startswith("model/")})
        if bad:
            raise CheckpointError(f"--init-from {cfg['init_from']} holds a NaN or an infinity "
                                  f"in {bad}")
    if resume:
        arrays, meta = load_checkpoint(resume)
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("position"), dict):
            raise CheckpointError(f"{resume} is not a training checkpoint of train.py")
        saved_cfg, note = saved_config(meta, cfg, resume)
        notes += [note] if note else []
        why = structural_mismatch(saved_cfg, cfg)
        if why:
            raise UsageError(f"cannot resume from {resume}: {why}")
        if meta.get("world_size", 1) != comm.size:
            raise UsageError(f"cannot resume from {resume}: it was written by a run over "
                             f"{meta.get('world_size', 1)} rank(s), this run has {comm.size}; "
                             f"resume with the same mpirun -n")
        saved_pos = meta["position"]
        why = position_problem(saved_pos, steps_per_epoch)
        if why:
            raise CheckpointError(f"cannot resume from {resume}: its saved position is damaged "
                                  f"or belongs to another data set ({why})")
        if saved_pos["epoch"] + (saved_pos["batch"] > 0) > cfg["epochs"]:
            more = (f" and {saved_pos['batch']} step{'s' if saved_pos['batch'] > 1 else ''}"
                    if saved_pos["batch"] else "")
            raise UsageError(f"cannot resume from {resume}: it has already trained "
                             f"{saved_pos['epoch']} epochs{more}, more than --epochs "
                             f"{cfg['epochs']}; ask for at least --epochs "
                             f"{saved_pos['epoch'] + (saved_pos['batch'] > 0)}")
        bad = first_non_finite(arrays)
        if bad:
            raise CheckpointError(f"cannot resume from {resume}: its tensor {bad} holds "
                                  f"non-finite values (NaN or inf); resume from an earlier "
                                  f"checkpoint, or start over with --overwrite")
        try:
            model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
            opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        except StateDictError as e:
            raise CheckpointError(f"{resume} does not fit this model: {e}") from None
        pos.update({k: saved_pos[k] for k in pos if k in saved_pos})
        opt.lr = lr_at(max(pos["step"] - 1, 0))    # the rate of the last step taken
        try:                                     # the neuron dropouts' count of masks drawn
            set_sequence_counts(model, meta.get("dropout_sequences") or
                                dict.fromkeys(sequence_counts(model), 0))
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{resume} has damaged dropout counts ({e})") from None
        if hasattr(method, "load_state_dict"):   # e.g. SLTT-K's count of random draws
            try:
                method.load_state_dict(meta.get("method_state") or {})
            except (TypeError, ValueError, AttributeError) as e:
                raise CheckpointError(f"{resume} has a damaged method state "
                                      f"{meta.get('method_state')!r} ({e})") from None
    if lead and resume and not resume_here and holds_run(out) and not cfg["overwrite"]:
        raise UsageError(f"{out} already holds another run than {resume}; continue that one "
                         f"with --resume auto, choose an empty --out, or replace it with "
                         f"--overwrite")
    replacing = cfg["overwrite"] and not resume_here     # the run in --out gives way to this one
    logged_epochs = set()        # whole epochs already in the metrics log (when resuming)
    if lead and resume and not replacing and os.path.exists(metrics_path):
        logged_epochs = {r.get("epoch") for r in read_jsonl(metrics_path) if not r.get("partial")}
    for note in notes:
        log(f"note: {note}", file=sys.stderr)
    if resume:
        finished = (f"all its --epochs {cfg['epochs']} are done" if pos["epoch"] >= cfg["epochs"]
                    else f"--max-steps {cfg['max_steps']} is reached"
                    if cfg["max_steps"] and pos["step"] >= cfg["max_steps"] else None)
        if finished:
            log(f"nothing to train: {resume} stands at step {pos['step']} and {finished}; "
                f"ask for more --epochs or --max-steps to train further")
            return 0
        log(f"resumed from {resume}: epoch {pos['epoch'] + 1}, {pos['batch']} of "
            f"{steps_per_epoch} steps done, step {pos['step']} in all")

    # -- nothing in --out has changed so far; from here on this run writes there ---------------
    if lead:
        removed = remove_stale_temporaries(out)
        if removed:
            log(f"removed {len(removed)} temporary file(s) of an interrupted save in {out}")
    if replacing and lead:
        for f in (metrics_path, best_path):     # the old run's; last.npz is replaced atomically
            if os.path.exists(f):
                os.remove(f)

    def write_config():
        if not lead:
            return
        with open(os.path.join(out, "config.json.tmp"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))

    # A new run says at once what it is; a resumed one rewrites config.json with its first
    # checkpoint, so that a run that ends before saving leaves the folder as it found it.
    config_pending = [bool(resume)]
    if not resume:
        write_config()

    # where this run's last good state lies on disk: a checkpoint resumed from was checked
    # finite above, and save() checks before writing (a last.npz that --overwrite is replacing
    # is another run's)
    good_checkpoint = {"path": resume or None}

    def diverged(what, step, epoch):
        kept = (f"last good checkpoint kept at {good_checkpoint['path']}"
                if good_checkpoint["path"] else "no checkpoint was saved yet")
        return FloatingPointError(f"{what} became non-finite at step {step} (epoch {epoch}); "
                                  f"stopped, {kept}")

    def save(path):
        arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
        bad = first_non_finite(arrays)       # e.g. a running variance the weights did not show
        if bad:
            raise diverged(bad, pos["step"], pos["epoch"] + (pos["batch"] > 0))
        if path == last_path:
            good_checkpoint["path"] = last_path
        if not lead:                 # every rank holds the same weights: rank 0 writes them
            return
        if config_pending[0]:
            write_config()
            config_pending[0] = False
        method_state = method.state_dict() if hasattr(method, "state_dict") else {}
        save_checkpoint(path, arrays, {"format": CHECKPOINT_FORMAT, "config": cfg,
                                       "position": dict(pos), "world_size": comm.size,
                                       "method_state": method_state,
                                       "dropout_sequences": sequence_counts(model)})

    # -- loop: Ctrl-C / SIGTERM stop after the current step (minirate/interrupt.py); under MPI
    #    the ranks agree on it through the per-step sum, so they all stop at the same step -------
    max_steps = cfg["max_steps"]
    done = max_steps and pos["step"] >= max_steps
    stopping = False
    with GracefulStop() as stop:
        try:
            while pos["epoch"] < cfg["epochs"] and not done and not stopping:
                epoch = pos["epoch"] + 1                 # 1-based in every message and record
                bar = Progress(steps_per_epoch, f"epoch  {epoch}/{cfg['epochs']}",
                               enabled=cfg["progress"] and lead)
                for xb, yb in train_loader.iter_epoch(epoch - 1, pos["batch"]):
                    t0 = time.perf_counter()
                    xb, yb = shard(xb), shard(yb)                # this rank's part of the batch
                    opt.lr = lr_at(pos["step"])
                    model.zero_grad()
                    grad_norms.clear()
                    # the optimizer steps once per batch, or after every time step (OTTT_O) or
                    # window (tbptt --update per-window) from inside the method
                    inner = (dict(after_step=update) if update_each_step else
                             dict(after_window=update) if cfg["update"] == "per-window" else {})
                    loss, logits = method.step(xp.asarray(xb, dtype=dtype), xp.asarray(yb),
                                               loss_fn, **inner)
                    if not inner:
                        update()
                    # loss and hits of the global batch, and whether any rank was asked to stop:
                    # every rank decides the same below
                    loss, hits, n, stops = comm.sum_numbers(
                        loss * len(yb), (to_numpy(logits).argmax(1) == yb).sum(), len(yb),
                        stop.requested)
                    loss, stopping = loss / n, stops > 0
                    grad_norm = sum(grad_norms)           # finite exactly when every norm is
                    # spikes can hide a diverged network (NaN >= θ is False): check weights too
                    bad = ("loss" if not math.isfinite(loss) else
                           "gradient norm" if not math.isfinite(grad_norm) else
                           "weights" if not math.isfinite(weight_sum(params)) else None)
                    if bad:
                        raise diverged(bad, pos["step"] + 1, epoch)
                    pos["step"] += 1
                    pos["batch"] += 1
                    pos["loss_sum"] += loss * n
                    pos["correct"] += int(hits)
                    pos["seen"] += int(n)
                    pos["images"] += int(n)
                    pos["kept_bytes"] = int(method.kept_bytes)
                    synchronize(xp)
                    pos["train_seconds"] += time.perf_counter() - t0
                    bar.update(pos["batch"], loss=pos["loss_sum"] / pos["seen"],
                               acc=pos["correct"] / pos["seen"],
                               img_s=round(pos["images"] / pos["train_seconds"], 1), lr=opt.lr)
                    if cfg["save_every"] and pos["step"] % cfg["save_every"] == 0:
                        save(last_path)
                    if max_steps and pos["step"] >= max_steps:
                        done = True
                    if done or stopping:
                        break
                bar.close()
                if stopping:
                    break
                epoch_done = pos["batch"] >= steps_per_epoch
                test_acc = evaluate(epoch, stop)
                stopping = comm.sum_numbers(stop.requested)[0] > 0
                if stopping:            # an evaluation cut short is redone on resume
                    break
                record = dict(epoch=epoch, step=pos["step"], partial=not epoch_done,
                              train_loss=pos["loss_sum"] / max(pos["seen"], 1),
                              train_acc=pos["correct"] / max(pos["seen"], 1), test_acc=test_acc,
                              lr=opt.lr,
                              img_per_s=round(pos["images"] / max(pos["train_seconds"], 1e-9), 2),
                              kept_bytes=pos["kept_bytes"])
                improved = test_acc > pos["best_acc"]
                if epoch_done:
                    pos.update(epoch=epoch, batch=0, loss_sum=0.0, correct=0, seen=0, images=0,
                               train_seconds=0.0)
                if improved:
                    pos["best_acc"] = test_acc
                # log first, then save: a kill in between repeats this epoch's end on resume, and
                # the repeated record (identical) is not written twice
                if lead and (epoch not in logged_epochs or not epoch_done):
                    append_jsonl(metrics_path, record)
                if improved:
                    save(best_path)
                save(last_path)
                part = "" if epoch_done else f" (partial: {pos['batch']}/{steps_per_epoch} steps)"
                log(f"epoch {epoch}/{cfg['epochs']}{part}: train loss {record['train_loss']:.4f} "
                    f"acc {record['train_acc']:.4f}  test acc {test_acc:.4f}  "
                    f"(best {pos['best_acc']:.4f})  {record['img_per_s']} img/s training")
            if stopping:
                save(last_path)
                log(f"interrupted: saved {last_path} at step {pos['step']} (epoch "
                    f"{pos['epoch'] + 1}, {pos['batch']}/{steps_per_epoch} steps); continue "
                    f"with --resume auto", file=sys.stderr)
                return 130
        except KeyboardInterrupt:
            print("\ninterrupted again: quit without saving the current step; the checkpoint "
                  "on disk is unchanged", file=sys.stderr, flush=True)
            return 130
    log(f"done: best test accuracy {pos['best_acc']:.4f}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (UsageError, DatasetError, CheckpointError, StateDictError, DeviceError,
            RunDirError, FloatingPointError, DistributedError, MemoryShortage) as e:
        fail(str(e))
    except MemoryError:                  # outside a training step, e.g. in an evaluation
        fail("out of memory; lower --batch-size or --eval-batch-size, --T or --width")
    except BatchStatisticsError as e:    # before any weight changed: nothing new was saved
        fail(f"{e}: use a larger --batch-size (per rank under mpirun) or larger images")
    except KeyboardInterrupt:      # before the training loop: nothing was written yet
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
        sys.exit(130)
