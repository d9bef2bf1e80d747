"""A one-line progress bar for the terminal: loss, accuracy, images/s and ETA.

Hand-written (20 lines) rather than a dependency: it redraws a single line with '\\r' when the
output is a terminal and prints one plain line per `every` updates otherwise (logs, CI).
"""
import sys
import time


def _hms(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total, desc="", stream=None, every=50, enabled=True):
        self.total, self.desc, self.every, self.enabled = total, desc, every, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.n = 0

    def update(self, n_done, **fields):
        """`n_done` steps are finished; `fields` (loss=..., acc=..., img_s=...) are shown."""
        self.n = n_done
        if not self.enabled or (not self.tty and n_done % self.every and n_done != self.total):
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(n_done, 1) * (self.total - n_done)
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in fields.items())
        width = 20
        filled = int(width * n_done / max(self.total, 1))
        line = (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {n_done}/{self.total}  "
                f"{shown}  {_hms(elapsed)}<{_hms(eta)}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
