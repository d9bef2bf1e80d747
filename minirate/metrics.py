"""What a training run records in --out as it goes (rank 0 writes; every rank checks):
config.json, one line of metrics.jsonl per evaluation, and the checkpoints last.npz and best.npz.

    record = RunRecord(cfg, comm, model, opt, method, pos, resume, replacing)
    record.start()                           # a new run says at once what it is: config.json
    count_step(pos, loss, hits, n, kept_bytes)   # after each step: the epoch's running figures
    record.log_epoch(epoch_line(...), done)  # metrics.jsonl, a whole epoch never twice
    record.save(record.last_path)            # checked finite, then written atomically
    raise record.diverged("loss", step, epoch)

A checkpoint holds the model's and the optimizer's arrays and, in its meta, the checkpoint
format, the resolved config, the position `pos` (where in the data the run stands, and the
running figures of its epoch), the number of ranks, the method's state and the neuron dropouts'
count of masks: what minirate/resume.py needs to continue the run exactly.
"""
import json
import os

from .checkpoint import append_jsonl, first_non_finite, read_jsonl, save_checkpoint
from .layers.dropout import sequence_counts

# The format of the checkpoints written here; resume.py reads it and every older one.
CHECKPOINT_FORMAT = 3


def count_step(pos, loss, hits, n, kept_bytes):
    """Move the position `pos` one step on: a global batch of n samples, its mean loss and its
    hits (correct predictions) join this epoch's running figures."""
    pos["step"] += 1
    pos["batch"] += 1
    pos["loss_sum"] += loss * n
    pos["correct"] += int(hits)
    pos["seen"] += int(n)
    pos["images"] += int(n)
    pos["kept_bytes"] = int(kept_bytes)       # bytes kept for backward in the last step


def epoch_line(epoch, pos, test_acc, lr, epoch_done):
    """The metrics.jsonl line of the evaluation after `epoch` (partial: cut short by
    --max-steps), from this epoch's running figures in `pos`."""
    return dict(epoch=epoch, step=pos["step"], partial=not epoch_done,
                train_loss=pos["loss_sum"] / max(pos["seen"], 1),
                train_acc=pos["correct"] / max(pos["seen"], 1), test_acc=test_acc,
                lr=lr,
                img_per_s=round(pos["images"] / max(pos["train_seconds"], 1e-9), 2),
                kept_bytes=pos["kept_bytes"])


class RunRecord:
    """The files of one run in --out, and where its last good state lies on disk. `pos` is the
    run's position dict, updated in place by the loop (count_step) and saved with each
    checkpoint; resume: the checkpoint the run continues ("" for a new run); replacing: this run
    replaces the one in --out (--overwrite)."""

    def __init__(self, cfg, comm, model, opt, method, pos, resume, replacing):
        self.cfg, self.comm, self.model, self.opt, self.method, self.pos = (
            cfg, comm, model, opt, method, pos)
        self.lead = comm.rank == 0           # every rank holds the same weights: rank 0 writes
        out = cfg["out"]
        self.last_path = os.path.join(out, "last.npz")
        self.best_path = os.path.join(out, "best.npz")
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        self.logged_epochs = set()    # whole epochs already in the metrics log (when resuming)
        if self.lead and resume and not replacing and os.path.exists(self.metrics_path):
            self.logged_epochs = {r.get("epoch") for r in read_jsonl(self.metrics_path)
                                  if not r.get("partial")}
        # A new run says at once what it is; a resumed one rewrites config.json with its first
        # checkpoint, so that a run that ends before saving leaves the folder as it found it.
        self.config_pending = bool(resume)
        # where this run's last good state lies on disk: a checkpoint resumed from was checked
        # finite (resume.py), and save() checks before writing (a last.npz that --overwrite is
        # replacing is another run's)
        self.good_checkpoint = resume or None

    def start(self):
        """The first write of a new run: its config.json."""
        if not self.config_pending:
            self.write_config()

    def write_config(self):
        if not self.lead:
            return
        out = self.cfg["out"]
        with open(os.path.join(out, "config.json.tmp"), "w") as f:
            json.dump(self.cfg, f, indent=2, sort_keys=True)
        os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))

    def diverged(self, what, step, epoch):
        """The error that ends a run whose `what` became non-finite, saying what is kept."""
        kept = (f"last good checkpoint kept at {self.good_checkpoint}"
                if self.good_checkpoint else "no checkpoint was saved yet")
        return FloatingPointError(f"{what} became non-finite at step {step} (epoch {epoch}); "
                                  f"stopped, {kept}")

    def log_epoch(self, line, epoch_done):
        """Append an evaluation's line to metrics.jsonl. Logged before the checkpoint is saved: a
        kill in between repeats the epoch's end on resume, and the repeated line (identical) is
        not written twice."""
        if self.lead and (line["epoch"] not in self.logged_epochs or not epoch_done):
            append_jsonl(self.metrics_path, line)

    def save(self, path):
        """Save the run's state to `path` (last.npz or best.npz), once every array is finite."""
        pos, model = self.pos, self.model
        arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in self.opt.state_dict().items()})
        bad = first_non_finite(arrays)       # e.g. a running variance the weights did not show
        if bad:
            raise self.diverged(bad, pos["step"], pos["epoch"] + (pos["batch"] > 0))
        if path == self.last_path:
            self.good_checkpoint = self.last_path
        if not self.lead:
            return
        if self.config_pending:
            self.write_config()
            self.config_pending = False
        method = self.method
        method_state = method.state_dict() if hasattr(method, "state_dict") else {}
        save_checkpoint(path, arrays, {"format": CHECKPOINT_FORMAT, "config": self.cfg,
                                       "position": dict(pos), "world_size": self.comm.size,
                                       "method_state": method_state,
                                       "dropout_sequences": sequence_counts(model)})
