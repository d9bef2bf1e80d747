"""train.py's options: every default, the command line that sets them, and the checks that
involve several options at once.

    cfg = parse_args(argv)       # the resolved config: a dict of every option, checked

DEFAULTS are the values a run takes when its command line (or its --recipe) says nothing;
`python train.py --help` lists each option with its default. A single option's range is its
argparse type (minirate/cli.py); what single ranges cannot say, option_conflict does. A
malformed command line ends with one line on stderr and exit status 2.
"""
import argparse
import sys

from . import recipes
from .backend import devices
from .cli import (ArgumentParser, DefaultsHelpFormatter, UsageError, at_least_one, below_one,
                  finite_float, nonnegative_float, nonnegative_int, positive_float, positive_int,
                  unit_interval)
from .data.augment import PIPELINES
from .data.events import EVENT_DATASETS, SPLIT_NAMES
from .data.events.datasets import SPLIT_ORDERS
from .data.events.loader import PIPELINES as EVENT_PIPELINES
from .data.events.ottt_transform import OTTT_SIZE
from .data.sets import DATASETS
from .layers.lif import RESETS, SURROGATES
from .layers.winograd import ALGOS
from .methods import LOCAL, METHODS, PACKING, UPDATES
from .methods.local import resolve_splits
from .models import ARCHS, build_model, input_size_problem

__all__ = ["DATASETS", "DEFAULTS", "ONLINE", "UsageError", "parse_args", "option_conflict",
           "sample_shape"]
DESCRIPTION = "Train a spiking neural network on CIFAR with a chosen training method."
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


def given_options(argv):
    """Option dests the words in argv set (`--no-flip` sets flip, `--lr=0.1` lr)."""
    dests = set()
    for word in argv:
        if word.startswith("--"):
            name = word[2:].split("=")[0].replace("-", "_")
            dests.add(name[3:] if name.startswith("no_") and name[3:] in DEFAULTS else name)
    return dests


def parse_args(argv=None):
    """The resolved config of the words in argv (default: the command line): a dict of every
    option. A malformed or impossible command line exits with status 2 and one line."""
    p = ArgumentParser(description=DESCRIPTION, allow_abbrev=False,
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
    g.add_argument("--neuron-dropout", type=below_one, default=d["neuron_dropout"],
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
                   help="3x3 stride-1 convolutions: im2col, winograd, or auto (the faster for "
                        "forward and for backward, measured per layer shape on first use)")
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
