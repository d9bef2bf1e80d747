"""One conversion at a time per frame cache: `<cache>.lock`, held with flock(2) while converting.

The same scheme as the run folder's lock (minirate/rundir.py): the lock file holds the owner's
pid and host name, and the kernel drops an flock when its process ends, however it ends, so a
lock file left behind by a killed conversion is stale by construction and simply taken over.
A second conversion of the same cache (another training run, another MPI rank, the converter
command) waits for the first, saying so in one line, and then finds the cache built, or the
partial file to continue if the first was stopped; without the lock it would open, judge
unreadable and delete the first one's live `.partial` file.
"""
import errno
import fcntl
import os
import socket
import time

from ..cifar import DatasetError


class ConversionLock:
    """Context manager: hold `<cache>.lock` for the conversion of `cache`, waiting while another
    live process holds it (polled every `poll` seconds; Ctrl-C ends the wait)."""

    def __init__(self, cache, poll=0.2):
        self.cache, self.path, self.fd, self.poll = cache, cache + ".lock", None, poll

    def __enter__(self):
        said = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise DatasetError(f"cannot create lock file {self.path}: "
                                   f"{e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # no flock on this mount
                    raise DatasetError(f"cannot lock {self.path}: {e.strerror or e}; choose a "
                                       f"--cache-dir on a file system with file locks") from None
                if not said:
                    print(f"waiting for the conversion of {self.cache} by another process "
                          f"({owner or 'unknown owner'}, lock file {self.path}) to end",
                          flush=True)
                    said = True
                time.sleep(self.poll)
                continue
            # The previous owner may have removed the file between our open and our flock:
            # then we hold a lock on a deleted file, and start again on the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        """Remove the lock file, then drop the lock (in that order: see the inode check)."""
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        return False


def _read_owner(fd):
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
