"""Resuming a run, and starting one from another run's weights: every check a checkpoint must
pass before this run uses it, and the restoring of what it holds.

    record = open_run(cfg, comm, log, model, opt, method, pos, lr_at, steps_per_epoch)

takes the --out folder (rundir.py), then resumes (`restore`, --resume) or starts from another
run's weights (`init_from`, --init-from), and opens the run's record (metrics.py).

A checkpoint continues a run only when it was trained as this run asks (STRUCTURAL: the network
and how it is trained) and its saved position means the same batches here (DATA_ORDER: the same
batch size and seed, the same number of steps per epoch). Every problem is one line: a
UsageError for a run that asks for something else than the checkpoint holds, a CheckpointError
for a damaged or foreign file. Every check comes before the first change to a file in --out.
"""
import math
import sys

from .checkpoint import CheckpointError, first_non_finite, load_checkpoint, section
from .cli import UsageError
from .config import DEFAULTS, ONLINE
from .data.events import EVENT_DATASETS
from .layers.base import StateDictError
from .layers.dropout import sequence_counts, set_sequence_counts
from .metrics import CHECKPOINT_FORMAT, RunRecord
from .rundir import claim, clear_for_run, refuse_other_run

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
# Checkpoint format (CHECKPOINT_FORMAT, the one metrics.py writes): 1 = unversioned (older
# minirate, config without the options added since), 2 = "format" in the meta and every key
# above in its config, 3 = the keys of SINCE_3 too.
SINCE_3 = ("mse_target", "neuron_dropout", "cifar_pipeline", "event_pipeline",
           "event_split_order")
REQUIRED = ("method", "dataset", "arch", "T", "step_mode", "width", "decay", "threshold", "reset",
            "v_reset", "detach_reset", "surrogate", "alpha", "dtype") + DATA_ORDER   # since 1
# What a format-1 checkpoint without a key trained with: the default of the minirate that wrote
# it. None of these defaults has changed, except that --loss arrived with sltt and ottt, and
# everything before them trained on the mean loss.
OLD_DEFAULTS = dict({k: DEFAULTS[k] for k in STRUCTURAL + EVENT_STRUCTURAL},
                    loss=lambda saved: "per-step" if saved.get("method") in ONLINE else "mean")



def open_run(cfg, comm, log, model, opt, method, pos, lr_at, steps_per_epoch):
    """Take --out for this run (rundir.py), then continue the run of a checkpoint (--resume:
    every check before the first change to a file in --out) or start from another run's weights
    (--init-from). Returns the run's RunRecord, or None for a resumed run with nothing left to
    train."""
    lead = comm.rank == 0
    resume, resume_here = claim(cfg, lead, log)     # --out locked, and no run replaced
    notes = []
    if resume:
        notes = restore(resume, cfg, comm, model, opt, method, pos, steps_per_epoch)
        opt.lr = lr_at(max(pos["step"] - 1, 0))    # the rate of the last step taken
    elif cfg["init_from"]:                         # a resumed run has its own weights
        init_from(cfg["init_from"], model)
    if lead:
        refuse_other_run(cfg["out"], resume, resume_here, cfg["overwrite"])
    replacing = cfg["overwrite"] and not resume_here     # the run in --out gives way to this one
    record = RunRecord(cfg, comm, model, opt, method, pos, resume, replacing)
    for note in notes:
        log(f"note: {note}", file=sys.stderr)
    if resume and (why := finished(cfg, pos)):
        log(f"nothing to train: {resume} stands at step {pos['step']} and {why}; "
            f"ask for more --epochs or --max-steps to train further")
        return None
    if resume:
        log(f"resumed from {resume}: epoch {pos['epoch'] + 1}, {pos['batch']} of "
            f"{steps_per_epoch} steps done, step {pos['step']} in all")
    # -- nothing in --out has changed so far; from here on this run writes there ---------------
    if lead:
        clear_for_run(cfg["out"], replacing, log)
    record.start()
    return record


def init_from(path, model):
    """--init-from: load the weights of the checkpoint at `path` into `model` (nothing else: a
    new run with a fresh optimizer, schedule and position)."""
    weights = section(load_checkpoint(path)[0], "model")
    try:
        model.load_state_dict(weights)
    except StateDictError as e:
        raise CheckpointError(f"--init-from {path} does not fit this model: {e}") from None
    bad = first_non_finite(weights)
    if bad:
        raise CheckpointError(f"--init-from {path} holds a NaN or an infinity in model/{bad}")


def restore(resume, cfg, comm, model, opt, method, pos, steps_per_epoch):
    """--resume: check the checkpoint at `resume` against this run, then load its weights, the
    optimizer's state, the position `pos` (updated in place), the neuron dropouts' count of masks
    and the method's state. Returns the notes to print (an older checkpoint's filled options)."""
    notes = []
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
        model.load_state_dict(section(arrays, "model"))
        opt.load_state_dict(section(arrays, "optim"))
    except StateDictError as e:
        raise CheckpointError(f"{resume} does not fit this model: {e}") from None
    pos.update({k: saved_pos[k] for k in pos if k in saved_pos})
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
    return notes


def finished(cfg, pos):
    """Why a run resumed at `pos` has nothing left to train under this cfg, or None."""
    return (f"all its --epochs {cfg['epochs']} are done" if pos["epoch"] >= cfg["epochs"]
            else f"--max-steps {cfg['max_steps']} is reached"
            if cfg["max_steps"] and pos["step"] >= cfg["max_steps"] else None)


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

