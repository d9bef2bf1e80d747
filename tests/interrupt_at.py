"""train.py with a Ctrl-C (SIGINT) delivered at a chosen point, for tests of interrupted runs.

    python -m tests.interrupt_at step N RANK train.py-options...   after the N-th training step
    python -m tests.interrupt_at eval N RANK train.py-options...   at the N-th evaluation batch

The signal goes to this process only when it is rank RANK of an mpirun (or the single process
for RANK 0), as a user's Ctrl-C reaching one rank would.
"""
import os
import runpy
import signal
import sys

import minirate.methods as methods
from minirate.distributed import launched_rank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    where, n, rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    calls = [0]

    def count_and_interrupt():
        calls[0] += 1
        if calls[0] == n and launched_rank() == rank:
            os.kill(os.getpid(), signal.SIGINT)

    if where == "step":
        make_method = methods.make_method

        def make_interrupted_method(*args, **kwargs):
            method = make_method(*args, **kwargs)
            step = method.step

            def interrupted_step(*a, **k):
                out = step(*a, **k)
                count_and_interrupt()
                return out
            method.step = interrupted_step
            return method
        methods.make_method = make_interrupted_method
    else:
        predict = methods.predict

        def interrupted_predict(*args, **kwargs):
            count_and_interrupt()
            return predict(*args, **kwargs)
        methods.predict = interrupted_predict
    sys.argv = ["train.py", *sys.argv[4:]]
    runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
