"""One conversion at a time per frame cache: `<cache>.lock`, held with flock(2) while converting.

The same lock file as the run folder's (minirate/lockfile.py): it holds the owner's pid and host
name, and the kernel drops an flock when its process ends, however it ends, so a lock file left
behind by a killed conversion is stale by construction and simply taken over.
A second conversion of the same cache (another training run, another MPI rank, the converter
command) waits for the first, saying so in one line, and then finds the cache built, or the
partial file to continue if the first was stopped; without the lock it would open, judge
unreadable and delete the first one's live `.partial` file.
"""
import time

from ...lockfile import LockBusy, LockUnavailable, acquire, release
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
                self.fd, _ = acquire(self.path)
                return self
            except LockUnavailable as e:
                raise DatasetError(f"{e}; choose a --cache-dir on a file system with file locks"
                                   if e.no_flock else str(e)) from None
            except LockBusy as e:
                if not said:
                    print(f"waiting for the conversion of {self.cache} by another process "
                          f"({e.owner or 'unknown owner'}, lock file {self.path}) to end",
                          flush=True)
                    said = True
                time.sleep(self.poll)

    def __exit__(self, *exc):
        release(self.path, self.fd)
        self.fd = None
        return False
