"""Train a spiking neural network on CIFAR with a chosen training method.

    python train.py --method rate --dataset cifar10 --arch resnet18 --T 4

Order of this file: config, data, model, optimizer, schedule, evaluate, loop, checkpoint.
Every option is listed by `python train.py --help`. Outputs in --out: last.npz and best.npz
(atomic checkpoints with the resolved config), metrics.jsonl (one JSON line per epoch) and
config.json. Errors in what was asked for (a missing data set, a bad checkpoint, an impossible
option) end the run with one line on stderr and exit status 1 (2 for a malformed command line).
"""
import argparse
import json
import math
import os
import signal
import sys
import time

import numpy as np

from minirate.backend import DEVICES, DeviceError, get_xp, synchronize, to_numpy
from minirate.cli import ArgumentParser, finite_float, positive_int
from minirate.checkpoint import (CheckpointError, append_jsonl, load_checkpoint, read_jsonl,
                                 save_checkpoint)
from minirate.data.cifar import DatasetError, load_cifar
from minirate.data.loader import Loader
from minirate.layers.base import StateDictError
from minirate.layers.lif import RESETS, SURROGATES
from minirate.methods import METHODS, UPDATES, make_method, predict
from minirate.methods.local import resolve_splits
from minirate.models import ARCHS, build_model
from minirate.optim import SGD, Adam, clip_grad_norm, cosine_lr
from minirate.progress import Progress

# -- config -------------------------------------------------------------------------------
DATASETS = {"cifar10": 10, "cifar100": 100, "cifar10-sample": 10}
DEFAULTS = dict(
    method="bptt", dataset="cifar10", arch="resnet18", T=4, step_mode="m", width=1.0,
    epochs=300, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, wd=5e-4,
    warmup_epochs=0, grad_clip=0.0, scale_grad_by_T=True,
    decay=0.2, threshold=1.0, reset="soft", v_reset=0.0, detach_reset=True,
    surrogate="sigmoid", alpha=None,
    crop=True, flip=True, cutout=0, autoaugment=False,
    data_dir="data", download=True, out="runs/default", resume="", max_steps=0, save_every=0,
    eval_batch_size=256, seed=0, device="cpu", dtype="float32", progress=True,
    window=None, update="per-batch",
    local_blocks=1, split_at=None,
)
# What a checkpoint must agree on to be resumed: the network and how it is trained.
STRUCTURAL = ("method", "dataset", "arch", "T", "step_mode", "width", "decay", "threshold",
              "reset", "v_reset", "detach_reset", "surrogate", "alpha", "dtype",
              "window", "update", "local_blocks", "split_at")


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 1."""


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    on_off = argparse.BooleanOptionalAction
    g = p.add_argument_group("method and model")
    g.add_argument("--method", choices=METHODS, default=d["method"],
                   help="training method (rate = rate_m)")
    g.add_argument("--dataset", choices=tuple(DATASETS), default=d["dataset"])
    g.add_argument("--arch", choices=ARCHS, default=d["arch"])
    g.add_argument("--T", type=positive_int, default=d["T"], help="time steps")
    g.add_argument("--step-mode", choices=("m", "s"), default=d["step_mode"],
                   help="bptt, tbptt: m = all steps per layer at once (BN over T*B), "
                        "s = one step at a time (BN per step)")
    g.add_argument("--width", type=finite_float, default=d["width"], help="channel multiplier")
    g.add_argument("--window", type=positive_int, default=d["window"],
                   help="tbptt: window K, 1 <= K <= T (none: K = T, plain BPTT)")
    g.add_argument("--update", choices=UPDATES, default=d["update"],
                   help="tbptt: one optimizer step per batch, or after every window "
                        "(same --lr, see methods/tbptt.py)")
    g.add_argument("--local-blocks", type=positive_int, default=d["local_blocks"],
                   help="train the network as N blocks, each from its own classifier "
                        "(default block starts per --arch: see minirate/models.py)")
    g.add_argument("--split-at", type=lambda s: [n for n in s.split(",") if n],
                   default=d["split_at"],
                   help="explicit block starts by module name, e.g. layer2,layer3")
    g = p.add_argument_group("neuron")
    g.add_argument("--decay", type=finite_float, default=d["decay"], help="LIF leak λ")
    g.add_argument("--threshold", type=finite_float, default=d["threshold"])
    g.add_argument("--reset", choices=RESETS, default=d["reset"])
    g.add_argument("--v-reset", type=finite_float, default=d["v_reset"], help="hard reset value")
    g.add_argument("--detach-reset", action=on_off, default=d["detach_reset"])
    g.add_argument("--surrogate", choices=SURROGATES, default=d["surrogate"])
    g.add_argument("--alpha", type=finite_float, default=d["alpha"],
                   help="surrogate sharpness/width (default: 4 sigmoid, 2 atan, 1 others)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=d["epochs"])
    g.add_argument("--batch-size", type=positive_int, default=d["batch_size"])
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=d["optimizer"])
    g.add_argument("--lr", type=finite_float, default=d["lr"], help="peak learning rate")
    g.add_argument("--momentum", type=finite_float, default=d["momentum"])
    g.add_argument("--nesterov", action=on_off, default=d["nesterov"])
    g.add_argument("--wd", type=finite_float, default=d["wd"],
                   help="weight decay on conv/linear weights only")
    g.add_argument("--warmup-epochs", type=finite_float, default=d["warmup_epochs"])
    g.add_argument("--grad-clip", type=finite_float, default=d["grad_clip"],
                   help="max global gradient norm (0 = off)")
    g.add_argument("--scale-grad-by-T", action=on_off, default=d["scale_grad_by_T"],
                   help="rate methods: multiply the loss gradient by 1/T as the published recipe")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=d["data_dir"])
    g.add_argument("--download", action=on_off, default=d["download"],
                   help="download the data set when missing")
    g.add_argument("--crop", action=on_off, default=d["crop"], help="random crop, 4-px padding")
    g.add_argument("--flip", action=on_off, default=d["flip"], help="random horizontal flip")
    g.add_argument("--cutout", type=int, default=d["cutout"], help="Cutout size in px (0 = off)")
    g.add_argument("--autoaugment", action=on_off, default=d["autoaugment"],
                   help="AutoAugment CIFAR-10 policy")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=d["out"], help="folder for checkpoints and metrics")
    g.add_argument("--resume", default=d["resume"], help="checkpoint path, or 'auto' = OUT/last.npz")
    g.add_argument("--max-steps", type=int, default=d["max_steps"],
                   help="stop after this many optimizer steps in all (0 = no limit)")
    g.add_argument("--save-every", type=int, default=d["save_every"],
                   help="also save last.npz every N steps (0 = end of epoch only)")
    g.add_argument("--eval-batch-size", type=positive_int, default=d["eval_batch_size"])
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--device", choices=DEVICES, default=d["device"])
    g.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"])
    g.add_argument("--progress", action=on_off, default=d["progress"], help="progress bar")
    args = p.parse_args(argv)
    for name in ("max_steps", "save_every", "cutout", "seed"):
        if getattr(args, name) < 0:
            p.error(f"argument --{name.replace('_', '-')}: must be >= 0")
    if args.lr <= 0:
        p.error("argument --lr: must be > 0")
    if args.method != "tbptt" and (args.window is not None or args.update != "per-batch"):
        p.error("arguments --window and --update need --method tbptt")
    if args.window is not None and args.window > args.T:
        p.error(f"argument --window: must be at most --T {args.T}, got {args.window}")
    if args.local_blocks > 1 or args.split_at:
        try:                      # block starts depend only on the architecture's layout
            resolve_splits(build_model(args.arch, width=1 / 64), args.local_blocks, args.split_at)
        except ValueError as e:
            p.error(f"argument --{'split-at' if args.split_at else 'local-blocks'}: {e}")
    return vars(args)


def weight_sum(params):
    """Σ of all weights in float64: finite exactly when every weight is finite."""
    return float(sum(p.sum(dtype="float64") for _, p, _, _ in params))


def structural_mismatch(saved, cfg):
    for k in STRUCTURAL:
        if saved.get(k, DEFAULTS[k]) != cfg[k]:
            return (f"checkpoint was trained with --{k.replace('_', '-')} {saved.get(k)}, "
                    f"this run asks for {cfg[k]}")
    return None


def main(argv=None):
    cfg = parse_args(argv)
    np.seterr(all="ignore")   # divergence is detected below and reported once, with its step
    print("config:", json.dumps(cfg, sort_keys=True), flush=True)
    xp = get_xp(cfg["device"])
    dtype = np.dtype(cfg["dtype"])

    # -- output folder: fail before any work if it cannot be written ----------------------
    out = cfg["out"]
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None
    last_path, best_path = os.path.join(out, "last.npz"), os.path.join(out, "best.npz")
    metrics_path = os.path.join(out, "metrics.jsonl")

    # -- data -------------------------------------------------------------------------------
    x_train, y_train, x_test, y_test, _ = load_cifar(cfg["dataset"], cfg["data_dir"],
                                                     download=cfg["download"])
    if cfg["batch_size"] > len(x_train):
        raise UsageError(f"--batch-size {cfg['batch_size']} is larger than the "
                         f"{len(x_train)} training images")
    train_loader = Loader(x_train, y_train, cfg["batch_size"], train=True, seed=cfg["seed"],
                          crop=cfg["crop"], flip=cfg["flip"], cutout=cfg["cutout"],
                          autoaugment=cfg["autoaugment"], dataset=cfg["dataset"])
    test_loader = Loader(x_test, y_test, cfg["eval_batch_size"], train=False, seed=cfg["seed"],
                         dataset=cfg["dataset"])
    steps_per_epoch = len(train_loader)

    # -- model --------------------------------------------------------------------------------
    neuron = dict(decay=cfg["decay"], threshold=cfg["threshold"], reset=cfg["reset"],
                  v_reset=cfg["v_reset"], detach_reset=cfg["detach_reset"],
                  surrogate=cfg["surrogate"], alpha=cfg["alpha"])
    model = build_model(cfg["arch"], DATASETS[cfg["dataset"]], cfg["width"], neuron, cfg["seed"])
    model.to(xp, dtype)
    method = make_method(cfg["method"], model, cfg["T"], cfg["step_mode"], cfg["scale_grad_by_T"],
                         window=cfg["window"], update=cfg["update"],
                         local_blocks=cfg["local_blocks"], split_at=cfg["split_at"])
    n_params = sum(int(p.size) for _, p, _, _ in model.parameters())
    print(f"model: {cfg['arch']} ({n_params:,} parameters), method {cfg['method']}, "
          f"T={cfg['T']}, {steps_per_epoch} steps/epoch, device {cfg['device']}", flush=True)

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
        return cosine_lr(cfg["lr"], step, total_steps, warmup_steps)

    # -- evaluate ---------------------------------------------------------------------------------
    def evaluate():
        model.eval()
        correct = n = 0
        for xb, yb in test_loader.iter_epoch(0):
            logits = predict(model, xp.asarray(xb, dtype=dtype), cfg["T"])
            correct += int((to_numpy(logits).argmax(1) == yb).sum())
            n += len(yb)
        model.train()
        return correct / max(n, 1)

    # -- resume ---------------------------------------------------------------------------------
    pos = dict(epoch=0, batch=0, step=0, best_acc=0.0, loss_sum=0.0, correct=0, seen=0)
    resume = cfg["resume"]
    if resume == "auto":
        resume = last_path if os.path.exists(last_path) else ""
        if not resume:
            print(f"resume auto: no checkpoint in {out}, starting fresh", flush=True)
    if resume:
        arrays, meta = load_checkpoint(resume)
        if "config" not in meta or "position" not in meta:
            raise CheckpointError(f"{resume} is not a training checkpoint of train.py")
        why = structural_mismatch(meta["config"], cfg)
        if why:
            raise UsageError(f"cannot resume from {resume}: {why}")
        try:
            model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
            opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        except StateDictError as e:
            raise CheckpointError(f"{resume} does not fit this model: {e}") from None
        pos.update(meta["position"])
        print(f"resumed from {resume} at epoch {pos['epoch']}, batch {pos['batch']}, "
              f"step {pos['step']}", flush=True)

    def save(path):
        arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
        save_checkpoint(path, arrays, {"config": cfg, "position": dict(pos)})

    with open(os.path.join(out, "config.json.tmp"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))
    logged_epochs = set()        # whole epochs already in the metrics log (when resuming)
    if resume and os.path.exists(metrics_path):
        logged_epochs = {r.get("epoch") for r in read_jsonl(metrics_path) if not r.get("partial")}

    # -- loop -------------------------------------------------------------------------------------
    def stop_on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop_on_signal)

    max_steps = cfg["max_steps"]
    done = max_steps and pos["step"] >= max_steps
    try:
        while pos["epoch"] < cfg["epochs"] and not done:
            epoch = pos["epoch"]
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg['epochs']}",
                           enabled=cfg["progress"])
            t0, images = time.perf_counter(), 0
            for xb, yb in train_loader.iter_epoch(epoch, pos["batch"]):
                opt.lr = lr_at(pos["step"])
                model.zero_grad()
                norms = []

                def update():           # once per batch, or after every window (--update)
                    norms.append(clip_grad_norm(params, cfg["grad_clip"] or math.inf))
                    opt.step()
                    model.zero_grad()

                per_window = dict(after_window=update) if cfg["update"] == "per-window" else {}
                loss, logits = method.step(xp.asarray(xb, dtype=dtype), xp.asarray(yb),
                                           **per_window)
                if not per_window:
                    update()
                grad_norm = sum(norms)  # non-finite when any update's norm was
                # spikes can hide a diverged network (NaN >= θ is False): check weights too
                bad = ("loss" if not math.isfinite(loss) else
                       "gradient norm" if not math.isfinite(grad_norm) else
                       "weights" if not math.isfinite(weight_sum(params)) else None)
                if bad:
                    raise FloatingPointError(
                        f"{bad} became non-finite at step {pos['step'] + 1} (epoch {epoch + 1}); "
                        f"stopped, last good checkpoint kept at {last_path}")
                pos["step"] += 1
                pos["batch"] += 1
                pos["loss_sum"] += loss * len(yb)
                pos["correct"] += int((to_numpy(logits).argmax(1) == yb).sum())
                pos["seen"] += len(yb)
                images += len(yb)
                synchronize(xp)
                rate = images / (time.perf_counter() - t0)
                bar.update(pos["batch"], loss=pos["loss_sum"] / pos["seen"],
                           acc=pos["correct"] / pos["seen"], img_s=round(rate, 1),
                           lr=opt.lr)
                if cfg["save_every"] and pos["step"] % cfg["save_every"] == 0:
                    save(last_path)
                if max_steps and pos["step"] >= max_steps:
                    done = True
                    break
            bar.close()
            epoch_done = pos["batch"] >= steps_per_epoch
            test_acc = evaluate()
            record = dict(epoch=epoch + 1, step=pos["step"], partial=not epoch_done,
                          train_loss=pos["loss_sum"] / max(pos["seen"], 1),
                          train_acc=pos["correct"] / max(pos["seen"], 1), test_acc=test_acc,
                          lr=opt.lr, img_per_s=round(images / (time.perf_counter() - t0), 2),
                          kept_bytes=int(method.kept_bytes))
            improved = test_acc > pos["best_acc"]
            if epoch_done:
                pos.update(epoch=epoch + 1, batch=0, loss_sum=0.0, correct=0, seen=0)
            if improved:
                pos["best_acc"] = test_acc
            # log first, then save: a kill in between repeats this epoch's end on resume, and
            # the repeated record (identical) is not written twice
            if (epoch + 1) not in logged_epochs or not epoch_done:
                append_jsonl(metrics_path, record)
            if improved:
                save(best_path)
            save(last_path)
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
                  f"acc {record['train_acc']:.4f}  test acc {test_acc:.4f}  "
                  f"(best {pos['best_acc']:.4f})  {record['img_per_s']} img/s", flush=True)
    except KeyboardInterrupt:
        save(last_path)
        print(f"\ninterrupted: saved {last_path} at step {pos['step']}; "
              f"continue with --resume {last_path}", file=sys.stderr, flush=True)
        return 130
    print(f"done: best test accuracy {pos['best_acc']:.4f}; checkpoints in {out}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (UsageError, DatasetError, CheckpointError, StateDictError, DeviceError,
            FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
