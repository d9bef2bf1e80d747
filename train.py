"""Train a spiking neural network on CIFAR with a chosen training method.

    python train.py --method rate --dataset cifar10 --arch resnet18 --T 4

Order of this file: model and method, optimizer and step, evaluate, then main: config, data,
model, schedule, output folder and resume, loop (with its checkpoints). Behind them:

    minirate/config.py       every option with its default (DEFAULTS), and the checks across them
    minirate/data/sets.py    the data sets and the loaders of the chosen one
    minirate/rundir.py       the --out folder: one run at a time, never replaced by accident
    minirate/resume.py       what a checkpoint must match to be resumed, and restoring it
    minirate/metrics.py      what the run writes: config.json, metrics.jsonl, the checkpoints
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

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minirate.backend import DeviceError, get_xp, synchronize, to_numpy
from minirate.checkpoint import CheckpointError
from minirate.config import (DATASETS, DEFAULTS, UsageError, option_conflict,  # noqa: F401
                             parse_args, sample_shape)
from minirate.data.cifar import DatasetError
from minirate.data.events import EVENT_DATASETS
from minirate.data.sets import make_loaders
from minirate.distributed import DistributedError, fail, sync_batchnorm, world
from minirate.interrupt import GracefulStop
from minirate.layers.base import StateDictError
from minirate.layers.batchnorm import BatchStatisticsError
from minirate.layers.winograd import set_conv_algo
from minirate.losses import ce_mse, cross_entropy
from minirate.methods import make_method, predict
from minirate.memory import MemoryShortage, guard_training
from minirate.metrics import count_step, epoch_line
from minirate.models import build_model
from minirate.optim import SGD, Adam, clip_grad_norm, lr_schedule
from minirate.progress import Progress
from minirate.resume import open_run
from minirate.rundir import RunDirError


def print_if(lead):
    """print, flushed, for rank 0 alone: the other ranks say nothing."""
    def log(*args, **kwargs):
        if lead:
            print(*args, **kwargs, flush=True)
    return log


# -- model and method ---------------------------------------------------------------------------
def build(cfg, comm, xp, num_classes):
    """The network on its device, the method that trains it, and the loss it trains on."""
    neuron = dict(decay=cfg["decay"], threshold=cfg["threshold"], reset=cfg["reset"],
                  v_reset=cfg["v_reset"], detach_reset=cfg["detach_reset"],
                  surrogate=cfg["surrogate"], alpha=cfg["alpha"])
    try:
        model = build_model(cfg["arch"], num_classes, cfg["width"], neuron, cfg["seed"],
                            in_channels=2 if cfg["dataset"] in EVENT_DATASETS else 3,
                            dropout=cfg["neuron_dropout"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    model.to(xp, np.dtype(cfg["dtype"]))
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
    # a step that clearly cannot fit in memory is refused now; one that runs out later ends with
    # the same line (minirate/memory.py)
    channels, size, _ = sample_shape(cfg)
    batch = (cfg["batch_size"] // comm.size, channels, size, size)      # this rank's share
    guard_training(method, model, cfg, ((cfg["T"],) if cfg["dataset"] in EVENT_DATASETS else ())
                   + batch, comm.size, xp)
    return model, method, loss_fn


def describe(cfg, comm, model, data, steps_per_epoch):
    """The lines that say what this run trains, on what and where."""
    n_params = sum(int(p.size) for _, p, _, _ in model.parameters())
    yield (f"model: {cfg['arch']} ({n_params:,} parameters), method {cfg['method']}, "
           f"T={cfg['T']}, {data.title}: {data.n_train} training and {data.n_test} test "
           f"samples, {steps_per_epoch} steps/epoch, device {cfg['device']}")
    if not comm.alone:
        yield (f"data-parallel: {comm.size} rank{'s' if comm.size > 1 else ''}, "
               f"{cfg['batch_size'] // comm.size} images each "
               f"per step, batchnorm {'synchronised' if cfg['sync_bn'] else 'per rank'}")


# -- optimizer, and a training step ------------------------------------------------------------
def make_step(cfg, comm, xp, model, method, loss_fn):
    """The optimizer, and step(xb, yb, requested): one training step on this rank's part of a
    batch. It returns the loss, the correct predictions and the size of the global batch, whether
    any rank was asked to stop, and what became non-finite (None when nothing did)."""
    params = model.parameters()
    if cfg["optimizer"] == "sgd":
        opt = SGD(params, cfg["lr"], cfg["momentum"], cfg["nesterov"], cfg["wd"])
    else:
        opt = Adam(params, cfg["lr"], weight_decay=cfg["wd"])
    grad_norms = []                 # of the optimizer steps in this batch (T of them for OTTT_O)

    def update():
        comm.average_gradients(params)                    # all ranks: the same gradient
        grad_norms.append(clip_grad_norm(params, cfg["grad_clip"] or math.inf))
        opt.step()
        model.zero_grad()

    # the optimizer steps once per batch, or after every time step (OTTT_O) or window (tbptt
    # --update per-window) from inside the method
    inner = (dict(after_step=update) if getattr(method, "update_each_step", False) else
             dict(after_window=update) if cfg["update"] == "per-window" else {})

    def step(xb, yb, requested):
        model.zero_grad()
        grad_norms.clear()
        loss, logits = method.step(xp.asarray(xb, dtype=np.dtype(cfg["dtype"])), xp.asarray(yb),
                                   loss_fn, **inner)
        if not inner:
            update()
        # loss and hits of the global batch, and whether any rank was asked to stop: every rank
        # decides the same
        loss, hits, n, stops = comm.sum_numbers(
            loss * len(yb), (to_numpy(logits).argmax(1) == yb).sum(), len(yb), requested)
        loss, grad_norm = loss / n, sum(grad_norms)     # finite exactly when every norm is
        # spikes can hide a diverged network (NaN >= θ is False): check weights too
        bad = ("loss" if not math.isfinite(loss) else
               "gradient norm" if not math.isfinite(grad_norm) else
               "weights" if not math.isfinite(weight_sum(params)) else None)
        return loss, hits, n, stops > 0, bad
    return opt, step


def weight_sum(params):
    """Σ of all weights in float64: finite exactly when every weight is finite."""
    return float(sum(p.sum(dtype="float64") for _, p, _, _ in params))


# -- evaluate -----------------------------------------------------------------------------------
def evaluate(model, data, cfg, comm, xp, epoch, stop):
    """Accuracy on the test set, each rank on its part; cut short when a stop is requested."""
    model.eval()
    correct = n = 0
    bar = Progress(len(data.test), f"eval   {epoch}/{cfg['epochs']}",
                   enabled=cfg["progress"] and comm.rank == 0)
    for i, (xb, yb) in enumerate(data.test.iter_epoch(0), start=1):
        if stop.requested:
            break
        xb, yb = data.shard(xb), data.shard(yb)          # each rank its part of the test set
        if len(yb):
            logits = predict(model, xp.asarray(xb, dtype=np.dtype(cfg["dtype"])), cfg["T"])
            correct += int((to_numpy(logits).argmax(1) == yb).sum())
            n += len(yb)
        bar.update(i, acc=correct / max(n, 1))
    bar.close()
    model.train()
    correct, n = comm.sum_numbers(correct, n)
    return correct / max(n, 1)


def main(argv=None):
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)   # see __main__ below
    # -- config: every option, its default and its checks in minirate/config.py ----------------
    cfg = parse_args(argv)
    np.seterr(all="ignore")   # divergence is detected below and reported once, with its step
    comm = world(cfg["mpi_timeout"])     # one process unless started by mpirun -n N, N > 1
    lead = comm.rank == 0                # only rank 0 prints and writes files
    log = print_if(lead)
    log("config:", json.dumps(cfg, sort_keys=True))
    xp = get_xp(cfg["device"])
    reduction = comm.use_device(xp)      # under MPI on GPUs: this rank's GPU, NCCL or host MPI
    if reduction:
        log(reduction)
    # -- data, model and method, optimizer ------------------------------------------------------
    data = make_loaders(cfg, comm)       # data.train, data.test; data.shard: this rank's part
    steps_per_epoch = len(data.train)
    model, method, loss_fn = build(cfg, comm, xp, data.num_classes)
    for line in describe(cfg, comm, model, data, steps_per_epoch):
        log(line)
    opt, step = make_step(cfg, comm, xp, model, method, loss_fn)
    # -- schedule: cosine over all steps, optional linear warm-up (minirate/optim.py) ------------
    lr_at = lr_schedule(cfg["lr"], cfg["epochs"], steps_per_epoch, cfg["warmup_epochs"],
                        cfg["lr_step"])

    # -- output folder and resume: every check comes before the first change to a file in --out
    pos = dict(epoch=0, batch=0, step=0, best_acc=0.0, loss_sum=0.0, correct=0, seen=0,
               images=0, train_seconds=0.0,     # this epoch's training so far, for its img/s
               kept_bytes=0)                    # bytes kept for backward in the last step
    record = open_run(cfg, comm, log, model, opt, method, pos, lr_at, steps_per_epoch)
    if record is None:                   # resumed, with nothing left to train
        return 0

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
                for xb, yb in data.train.iter_epoch(epoch - 1, pos["batch"]):
                    t0 = time.perf_counter()
                    opt.lr = lr_at(pos["step"])
                    loss, hits, n, stopping, bad = step(data.shard(xb), data.shard(yb),
                                                        stop.requested)   # this rank's part
                    if bad:
                        raise record.diverged(bad, pos["step"] + 1, epoch)
                    count_step(pos, loss, hits, n, method.kept_bytes)
                    synchronize(xp)
                    pos["train_seconds"] += time.perf_counter() - t0
                    bar.update(pos["batch"], loss=pos["loss_sum"] / pos["seen"],
                               acc=pos["correct"] / pos["seen"],
                               img_s=round(pos["images"] / pos["train_seconds"], 1), lr=opt.lr)
                    if cfg["save_every"] and pos["step"] % cfg["save_every"] == 0:
                        record.save(record.last_path)
                    if max_steps and pos["step"] >= max_steps:
                        done = True
                    if done or stopping:
                        break
                bar.close()
                if stopping:
                    break
                epoch_done = pos["batch"] >= steps_per_epoch
                test_acc = evaluate(model, data, cfg, comm, xp, epoch, stop)
                stopping = comm.sum_numbers(stop.requested)[0] > 0
                if stopping:            # an evaluation cut short is redone on resume
                    break
                line = epoch_line(epoch, pos, test_acc, opt.lr, epoch_done)
                improved = test_acc > pos["best_acc"]
                if epoch_done:
                    pos.update(epoch=epoch, batch=0, loss_sum=0.0, correct=0, seen=0, images=0,
                               train_seconds=0.0)
                if improved:
                    pos["best_acc"] = test_acc
                record.log_epoch(line, epoch_done)      # first the log, then the checkpoints
                if improved:
                    record.save(record.best_path)
                record.save(record.last_path)
                part = "" if epoch_done else f" (partial: {pos['batch']}/{steps_per_epoch} steps)"
                log(f"epoch {epoch}/{cfg['epochs']}{part}: train loss {line['train_loss']:.4f} "
                    f"acc {line['train_acc']:.4f}  test acc {test_acc:.4f}  "
                    f"(best {pos['best_acc']:.4f})  {line['img_per_s']} img/s training")
            if stopping:
                record.save(record.last_path)
                log(f"interrupted: saved {record.last_path} at step {pos['step']} (epoch "
                    f"{pos['epoch'] + 1}, {pos['batch']}/{steps_per_epoch} steps); continue "
                    f"with --resume auto", file=sys.stderr)
                return 130
        except KeyboardInterrupt:
            print("\ninterrupted again: quit without saving the current step; the checkpoint "
                  "on disk is unchanged", file=sys.stderr, flush=True)
            return 130
    log(f"done: best test accuracy {pos['best_acc']:.4f}; checkpoints in {cfg['out']}")
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
