"""A progress bar that suits both a terminal and a log file: fields, rate and ETA.

On a terminal it redraws one line with '\\r' (at most 10 times a second). When the output is a
file or a pipe (a log, CI) it prints a whole line at the first update, then whenever `interval`
seconds (default 15) have passed since the last line, and at the end: a log never goes silent
for long, and never fills with carriage returns. That last point is why this is hand-written and
not tqdm: tqdm writes its '\\r' redraws into files too, which turns a log into one very long line.
"""
import sys
import time


def _hms(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total, desc="", stream=None, interval=15.0, enabled=True, unit="",
                 every=0):
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        self.unit, self.every = unit, every        # every > 0: also a log line every N updates
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.last_shown = None
        self.n = 0

    def update(self, n_done, **fields):
        """`n_done` units are finished; `fields` (loss=..., acc=..., img_s=...) are shown."""
        self.n = n_done
        if not self.enabled:
            return
        now = time.perf_counter()
        gap = 0.1 if self.tty else self.interval
        due = (self.last_shown is None or now - self.last_shown >= gap or n_done == self.total
               or (not self.tty and self.every and n_done % self.every == 0))
        if not due:
            return
        self.last_shown = now
        elapsed = now - self.start
        eta = elapsed / max(n_done, 1) * (self.total - n_done)
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in fields.items())
        width = 20
        filled = int(width * n_done / max(self.total, 1))
        line = (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                f"{n_done}/{self.total}{self.unit}  {shown}  {_hms(elapsed)}<{_hms(eta)}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty and self.last_shown is not None:
            self.stream.write("\n")
            self.stream.flush()
