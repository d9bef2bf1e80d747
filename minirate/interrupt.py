"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM finish the current step before saving.

A step changes the weights, the optimizer state and the batchnorm running statistics in many
places; a checkpoint taken in the middle of one would hold a state no uninterrupted run ever
had. So the first signal only sets `requested`, and the training loop stops at its next safe
point (after a step, or between evaluation batches) and saves there: the saved state is exactly
that of an uninterrupted run after the same number of steps. A second signal raises
KeyboardInterrupt at once, for a user who cannot wait; the checkpoint already on disk is then
kept as it was (saves are atomic).
"""
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager: within it, the first SIGINT/SIGTERM sets `requested`; the second raises
    KeyboardInterrupt. The previous handlers are restored on exit."""

    def __init__(self, notice="stopping after the current step; press Ctrl-C again to quit "
                              "without saving it", stream=None):
        self.notice, self.stream = notice, stream or sys.stderr
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write(f"\n{signal.Signals(signum).name}: {self.notice}\n")
        self.stream.flush()

    def __enter__(self):
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False
