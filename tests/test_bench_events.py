"""benchmarks/bench_events.py: a bad command line is one line on stderr, before any work."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_events.py")


@pytest.mark.parametrize("args,words", [(["--T", "0"], ["--T", "at least 1"]),
                                        (["--repeats", "0"], ["--repeats"]),
                                        (["--events", "-5"], ["--events"]),
                                        (["--method", "foo"], ["--method", "foo"]),
                                        (["--width", "nan"], ["--width"]),
                                        (["--batch-size", "41"], ["--batch-size", "40"])])
def test_bad_command_lines_are_one_line_errors(args, words):
    r = subprocess.run([sys.executable, SCRIPT, "--batch-size", "2", *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
