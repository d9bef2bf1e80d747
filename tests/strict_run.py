"""Run train.py or a module's command line with the strict CuPy stand-in registered as device
"strict" (tests only):

    python -m tests.strict_run train.py --device strict --dataset cifar10-sample ...
    python -m tests.strict_run -m minirate.study memory-time --device strict ...
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tests.strict_cupy import register
    register()
    if argv[:1] == ["-m"]:
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(os.path.join(ROOT, argv[0]) if not os.path.isabs(argv[0]) else argv[0],
                       run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
