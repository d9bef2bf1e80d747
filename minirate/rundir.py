"""The --out folder of a training run: one writer at a time, and no run replaced by accident.

    lock = RunLock(out)          # OUT/.lock, held until lock.release() or the process exits
    prepare_out(out)             # OUT exists and is writable, or a one-line RunDirError
    holds_run(out)               # True when OUT already has a run's checkpoints or log
    remove_stale_temporaries(out)

train.py's use of them (through resume.open_run): `claim` takes the folder before anything is
read from a checkpoint, `refuse_other_run` once the checkpoint has passed its checks, and
`clear_for_run` is the run's first change in the folder.

The lock is a file holding the owner's pid and host name, locked with flock(2) (lockfile.py): a
lock file left behind by a dead run is stale by construction, and the next run locks it, says
whose it was, and takes it over. A live owner keeps it locked, and a second run into the same
folder is refused with one line.

A save killed midway leaves its temporary file (".NAME.PID.HEX.tmp", see checkpoint.py, or
"config.json.tmp") beside the checkpoint; the owner of the lock removes such files on start.
"""
import atexit
import errno
import os
import re

from .cli import UsageError
from .lockfile import LockBusy, LockUnavailable, acquire, release

LOCK_NAME = ".lock"
RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")
_TEMPORARY = re.compile(r"^(\..+\.\d+\.[0-9a-f]+\.tmp|config\.json\.tmp)$")


class RunDirError(Exception):
    """The folder is in use by another live run, or cannot be locked. One-line message."""


class RunLock:
    def __init__(self, out):
        self.path = os.path.join(out, LOCK_NAME)
        try:
            self.fd, self.previous_owner = acquire(self.path)   # previous: a stale lock's owner
        except LockUnavailable as e:
            raise RunDirError(f"{e}; choose an --out on a file system with file locks"
                              if e.no_flock else str(e)) from None
        except LockBusy as e:
            raise RunDirError(f"{out} is in use by another run ({e.owner or 'unknown owner'}, "
                              f"lock file {self.path}); wait for it to end or choose "
                              f"another --out") from None
        atexit.register(self.release)     # however the run ends, short of being killed

    def release(self):
        """Remove the lock file and drop the lock."""
        if self.fd is not None:
            release(self.path, self.fd)
            self.fd = None


def prepare_out(out):
    """Make the folder `out` (and its parents) if missing and check that files can be written in
    it; a one-line RunDirError says what stands in the way. Leaves no file behind."""
    why = _not_a_folder(out)
    if why:
        raise RunDirError(f"cannot use --out {out}: {why}")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        why = _not_a_folder(e.filename or out) if e.errno in (errno.EEXIST, errno.ENOTDIR,
                                                             errno.ELOOP) else None
        raise RunDirError(f"cannot write to --out {out}: "
                          f"{why or e.strerror or e}") from None


def _not_a_folder(path):
    """Why an existing `path` cannot be a folder (a file, a dangling link, a link loop), else
    None. The path's parents are looked at too: a/b/c needs a and a/b to be folders."""
    path = os.path.abspath(path)
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            try:
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return f"{path} is a symbolic link that loops back on itself"
            return (f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                    f"create that folder or choose another --out")
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{path} is a file, not a folder"
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def holds_run(out):
    """True when `out` already holds a run: a checkpoint or a metrics log."""
    return any(os.path.exists(os.path.join(out, f)) for f in RUN_FILES)


def remove_stale_temporaries(out):
    """Delete the temporary files of saves that were killed midway. Returns their names.

    Only call this while holding the folder's lock: a live run's temporary file is not stale.
    """
    removed = []
    for name in sorted(os.listdir(out)):
        if _TEMPORARY.match(name):
            try:
                os.remove(os.path.join(out, name))
                removed.append(name)
            except OSError:
                pass
    return removed


# -- a training run's use of the folder (train.py; rank 0 alone writes) -------------------------
def claim(cfg, lead, log):
    """Take --out for this run: resolve --resume auto, and on rank 0 make the folder, lock it and
    refuse to start a new run over one it holds. Returns (the checkpoint to resume from or "",
    whether that checkpoint lies in --out and so continues the run there)."""
    out = cfg["out"]
    last_path = os.path.join(out, "last.npz")
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
    return resume, resume_here


def refuse_other_run(out, resume, resume_here, overwrite):
    """A checkpoint from elsewhere would replace the run that --out holds: only with
    --overwrite. (Asked once the checkpoint itself has passed its checks.)"""
    if resume and not resume_here and holds_run(out) and not overwrite:
        raise UsageError(f"{out} already holds another run than {resume}; continue that one "
                         f"with --resume auto, choose an empty --out, or replace it with "
                         f"--overwrite")


def clear_for_run(out, replacing, log):
    """The first change this run makes in --out: remove what interrupted saves left behind and,
    when this run replaces the one there, that run's log and best checkpoint (its last.npz is
    replaced atomically by this run's first save)."""
    removed = remove_stale_temporaries(out)
    if removed:
        log(f"removed {len(removed)} temporary file(s) of an interrupted save in {out}")
    if replacing:
        for name in ("metrics.jsonl", "best.npz"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
