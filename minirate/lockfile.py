"""A lock file held with flock(2): one process at a time for a run folder or a frame cache.

    fd, previous = acquire(path)     # locked; previous: "pid N on HOST" of a stale lock, or None
    release(path, fd)

The file holds its owner's pid and host name. The kernel drops an flock when its process ends,
however it ends (even SIGKILL), so a lock file left behind by a dead process is stale by
construction: the next one locks it, learns whose it was, and takes it over. While its owner
lives, `acquire` raises LockBusy naming that owner; the callers decide whether to refuse
(rundir.py: a second run into one --out) or to wait (data/events/lock.py: a second conversion).
"""
import errno
import fcntl
import os
import socket


class LockBusy(Exception):
    """A live process holds the lock; `owner` is what its lock file says ("pid N on HOST")."""

    def __init__(self, owner):
        super().__init__(owner)
        self.owner = owner


class LockUnavailable(Exception):
    """The lock file cannot be created, or this file system has no flock (`no_flock`)."""

    def __init__(self, message, no_flock=False):
        super().__init__(message)
        self.no_flock = no_flock


def acquire(path):
    """Lock `path` (created if missing) and write this process into it. Returns the descriptor
    and the stale owner's text (None when the file was new or empty)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise LockUnavailable(f"cannot create lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = read_owner(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):     # no flock on this mount
                raise LockUnavailable(f"cannot lock {path}: {e.strerror or e}",
                                      no_flock=True) from None
            raise LockBusy(owner) from None
        # The previous owner may have removed the file between our open and our flock: then we
        # hold a lock on a deleted file, and start again on the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = read_owner(fd) or None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd, previous


def release(path, fd):
    """Remove the lock file, then drop the lock (in that order: see the inode check above)."""
    try:
        os.remove(path)
    except OSError:
        pass
    os.close(fd)


def read_owner(fd):
    """What a lock file says of its owner ("pid N on HOST"), "" when unreadable."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
