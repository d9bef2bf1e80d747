"""Study 5, training curves: the metrics.jsonl of one or more runs of train.py, overlaid against
epoch, each run labelled from its config.json by method and T (and recipe, window K, local
blocks N or split points where set).

    python -m minirate.study curves runs/bptt-T4 runs/rate-T4 runs/rate-T8 --out runs/study

A run's log holds one line per epoch, written when the epoch's evaluation ends:

    {"epoch": 1, "step": 3, "partial": true, "train_loss": 2.29, "train_acc": 0.125,
     "test_acc": 0.1, "lr": 0.1, "img_per_s": 131.26, "kept_bytes": 4031280}

partial: the epoch was cut short by --max-steps; its train loss, accuracy and images/s are over
the steps done so far. A resumed run appends to the same log, so an epoch may appear more than
once (a partial line, then the whole epoch once it is finished): the later line is the one
kept. A run still being written, or killed mid-write, may end in a line without its newline;
that line is skipped with a note (train.py cuts it off itself when it resumes). Any other line
that is not a JSON object with an epoch number is an error.
"""
import json
import os

from ..checkpoint import CheckpointError, jsonl_records
from .common import MiB, StudyError, format_table, note
from .plots import _pyplot

# (record field, panel title, scale); the panels of the figure, in reading order
QUANTITIES = (("train_acc", "train accuracy (over the epoch's batches)", 1.0),
              ("test_acc", "test accuracy", 1.0),
              ("train_loss", "train loss (over the epoch's batches)", 1.0),
              ("lr", "learning rate (at the epoch's last step)", 1.0),
              ("img_per_s", "training images/s", 1.0),
              ("kept_bytes", "bytes kept for backward (MiB)", 1 / MiB))
# a record's fields, in train.py's order
FIELDS = ("epoch", "step", "partial", "train_loss", "train_acc", "test_acc", "lr", "img_per_s",
          "kept_bytes")


def read_metrics(path):
    """The records of a metrics.jsonl, one per epoch in epoch order, the later line winning
    where an epoch appears twice. Returns (records, lines read, torn): torn is True when the
    last line had no newline (cut mid-write) and was skipped. Raises StudyError naming the
    line of anything else that is not a record of train.py."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StudyError(f"cannot read {path}: {e.strerror or e}") from None
    # every complete line ends in a newline (train.py writes each line in one piece)
    torn = bool(data.rsplit(b"\n", 1)[-1].strip())
    try:
        lines = jsonl_records(data, path)
    except CheckpointError as e:
        raise StudyError(str(e)) from None
    by_epoch = {}
    for lineno, record in lines:
        epoch = record.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise StudyError(f"log {path} line {lineno} has no epoch number (a positive "
                             f"integer): {epoch!r}")
        for key in FIELDS[1:]:
            v = record.get(key)
            if v is not None and not isinstance(v, (int, float)):
                raise StudyError(f"log {path} line {lineno}: {key} is not a number: {v!r}")
        by_epoch[epoch] = {key: record.get(key) for key in FIELDS}
    return [by_epoch[e] for e in sorted(by_epoch)], len(lines), torn


def label_of(cfg):
    """'bptt T=4', 'tbptt T=8 K=2', 'bptt T=4 N=2', 'sltt-k-cifar10-preactresnet18: sltt T=6
    K=2': the method, T, and where set the recipe, window K (tbptt; sltt's steps with a
    backward), local blocks N and split points."""
    words = [str(cfg.get("method", "?")), f"T={cfg.get('T', '?')}"]
    K = cfg.get("window") if cfg.get("window") is not None else cfg.get("sltt_k")
    if K is not None:
        words.append(f"K={K}")
    if (cfg.get("local_blocks") or 1) != 1:
        words.append(f"N={cfg['local_blocks']}")
    if cfg.get("split_at"):
        words.append("split=" + ",".join(map(str, cfg["split_at"])))
    label = " ".join(words)
    return f"{cfg['recipe']}: {label}" if cfg.get("recipe") else label


def locate(run):
    """A RUN argument (a run folder of train.py, or its metrics.jsonl) -> (folder, log path)."""
    if os.path.isfile(run):
        return os.path.dirname(run) or ".", run
    if not os.path.isdir(run):
        raise StudyError(f"{run}: no such run folder")
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        raise StudyError(f"{run} holds no metrics.jsonl (not a run of train.py, or one that has "
                         f"not finished its first epoch)")
    return run, path


def read_run(run):
    """One RUN argument -> dict: run (as given), name (its folder's), label, config, records,
    lines, torn. A run without a config.json is labelled by its folder's name."""
    folder, path = locate(run)
    records, lines, torn = read_metrics(path)
    cfg_path = os.path.join(folder, "config.json")
    cfg = {}
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise StudyError(f"cannot read {cfg_path}: {getattr(e, 'strerror', None) or e}") \
                from None
        if not isinstance(cfg, dict):
            raise StudyError(f"{cfg_path} is not a config of train.py (not a JSON object)")
    else:
        note(f"{run} has no config.json; labelled by its folder")
    if torn:
        note(f"{path}: skipped its last line, cut short without a newline (a run still "
             f"writing, or killed mid-write)")
    if not records:
        note(f"{path} holds no epoch yet; {run} is left out")
    name = os.path.basename(os.path.abspath(folder))
    return dict(run=run, name=name, label=label_of(cfg) if cfg else name, config=cfg,
                records=records, lines=lines, torn=torn)


def training_curves(runs):
    """The runs (paths) read and labelled: (rows, runs). rows: one dict per run and epoch, in
    the order given, fields run, label, method, T and those of FIELDS. runs: read_run's dict
    of each, its label made unique by the folder's name (or path) where two runs read alike."""
    logs = [os.path.realpath(locate(r)[1]) for r in runs]
    for i, log in enumerate(logs):
        if log in logs[:i]:
            raise StudyError(f"{runs[i]} is given twice (as {runs[logs.index(log)]})")
    read = [read_run(r) for r in runs]
    labels, names = [r["label"] for r in read], [r["name"] for r in read]
    for r in read:
        if labels.count(r["label"]) > 1:
            unique = names.count(r["name"]) == 1 and r["name"] != r["label"]
            r["label"] += f" [{r['name'] if unique else r['run']}]"
    rows = [dict(run=r["run"], label=r["label"], method=r["config"].get("method"),
                 T=r["config"].get("T"), **rec) for r in read for rec in r["records"]]
    if not rows:
        raise StudyError("no RUN has a whole line in its metrics.jsonl yet")
    return rows, read


def shared_title(cfgs):
    """What all runs share (data set, architecture and width, batch size), for the title."""
    same = lambda key: len({json.dumps(c.get(key)) for c in cfgs}) == 1 \
        and cfgs[0].get(key) is not None  # noqa: E731
    words = [cfgs[0]["dataset"]] if same("dataset") else []
    if same("arch"):
        words.append(cfgs[0]["arch"] + (f" (width {cfgs[0]['width']})" if same("width") else ""))
    if same("batch_size"):
        words.append(f"batch {cfgs[0]['batch_size']}")
    return ", ".join(words)


def plot_curves(rows, path, title):
    """One panel per quantity of QUANTITIES against epoch, one colour per run (its label in the
    legend); an epoch cut short (partial) drawn with a hollow marker."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), layout="constrained")
    for ax, (key, name, scale) in zip(axes.flat, QUANTITIES):
        for k, label in enumerate(labels):
            rs = [r for r in rows if r["label"] == label and r[key] is not None]
            # later runs drawn thinner, so that equal curves (kept bytes at one T) stay visible
            colour, lw, ms = f"C{k % 10}", max(3.0 - 0.6 * k, 1.0), max(7 - 1.5 * k, 3)
            ax.plot([r["epoch"] for r in rs], [r[key] * scale for r in rs], "o-", color=colour,
                    ms=ms, lw=lw, label=label)
            cut = [r for r in rs if r["partial"]]
            ax.plot([r["epoch"] for r in cut], [r[key] * scale for r in cut], "o", ms=ms + 3,
                    color=colour, mfc="white", zorder=3)
        ax.set(xlabel="epoch", title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key != "train_loss":
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(labels), 4), fontsize=9)
    if any(r["partial"] for r in rows):
        title += "  (hollow: an epoch cut short by --max-steps)"
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, spec, scale=1):
    return "-" if v is None else format(v * scale, spec)


def summary(r):
    """A run's line in the printed table: its last epoch, and its best test accuracy."""
    last = r["records"][-1]
    tests = [x["test_acc"] for x in r["records"] if x["test_acc"] is not None]
    return [r["label"], r["run"], f"{last['epoch']}" + (" (partial)" if last["partial"] else ""),
            _fmt(last["train_loss"], ".4f"), _fmt(last["train_acc"], ".4f"),
            _fmt(last["test_acc"], ".4f"), _fmt(max(tests, default=None), ".4f"),
            _fmt(last["img_per_s"], ".1f"), _fmt(last["kept_bytes"], ".2f", 1 / MiB)]


def run(a, xp, bar):
    rows, read = training_curves(a.runs)
    shown = [r for r in read if r["records"]]
    for i, r in enumerate(shown):
        bar(i, len(shown), run=r["label"], epochs=len(r["records"]))
    info = dict(runs=[dict(run=r["run"], label=r["label"], config=r["config"], lines=r["lines"],
                           epochs=len(r["records"]), torn_last_line=r["torn"]) for r in read],
                later_line_wins="an epoch logged twice (a resumed run) keeps its later line")
    lines = [summary(r) for r in shown]
    table = format_table(["label", "run", "last epoch", "train loss", "train acc", "test acc",
                          "best test", "img/s", "kept MiB"], lines)
    common = shared_title([r["config"] for r in shown])
    title = f"training curves: {len(shown)} run{'s' * (len(shown) != 1)}" + \
        (f", {common}" if common else "")
    return rows, info, table, plot_curves, title


def add_parser(sub, fmt):
    s = sub.add_parser("curves", help="training curves of runs of train.py", formatter_class=fmt,
                       allow_abbrev=False,
                       description="Train and test accuracy, loss, learning rate, images/s and "
                                   "bytes kept against epoch, from the metrics.jsonl of each RUN, "
                                   "overlaid and labelled by method and T (from its config.json). "
                                   "Writes curves.png, curves.csv (one row per run and epoch) "
                                   "and curves.json.")
    s.add_argument("runs", nargs="+", metavar="RUN",
                   help="a run folder of train.py (its --out), or its metrics.jsonl")
    s.add_argument("--out", default="runs/study", help="folder for the csv/json/png files")
    s.set_defaults(device="cpu")            # reads logs only
