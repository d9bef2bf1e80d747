"""Runs that cannot work are refused with one line: a step too large for the memory there is
(minirate/memory.py, costs.step_memory, backend.available_memory), an input too small for the
architecture (models.input_size_problem), and a rank that stopped answering (distributed.py)."""
import os
import resource
import subprocess
import sys
import types

import numpy as np
import pytest

from minirate.backend import available_memory
from minirate.costs import step_memory
from minirate.distributed import Communicator, DistributedError
from minirate.methods import make_method
from minirate.models import build_model, input_size_problem
from tests.conftest import ROOT

QUICK = ["--dataset", "cifar10-sample", "--arch", "small", "--epochs", "1", "--no-progress"]


def _python(args, tmp_path, limit=None, timeout=120):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=set_limit if limit else None,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def _one_error_line(r):
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- the estimate ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["small", "vggsnn_cifar"])
@pytest.mark.parametrize("method,kw", [("bptt", {}), ("bptt", {"step_mode": "s"}),
                                       ("tbptt", {"window": 2}), ("rate_m", {}), ("rate_s", {}),
                                       ("sltt", {}), ("ottt", {}), ("bptt", {"local_blocks": 2})])
def test_estimated_kept_bytes_are_a_close_floor_of_the_real_ones(arch, method, kw):
    """What costs.step_memory counts from shapes stays under what the method really keeps
    (so a run that fits is never refused), and not far under (so it means something)."""
    T, B = 3, 4
    model = build_model(arch, 10, 0.25)
    x = np.random.default_rng(0).normal(size=(B, 3, 32, 32)).astype(np.float32)
    m = make_method(method, model, T, per_step_loss=method in ("sltt", "ottt"), **kw)
    m.step(x, np.arange(B) % 10)
    est = step_memory(model, x.shape, T, method, kw.get("step_mode", "m"), kw.get("window"),
                      kw.get("local_blocks", 1))
    assert 0.7 * m.kept_bytes <= est["kept"] <= 1.02 * m.kept_bytes, (est, m.kept_bytes)
    assert est["total"] == est["kept"] + est["activations"] + est["input"] + est["params"]
    # bptt grows with T, the methods flat in T do not
    longer = step_memory(model, x.shape, 10 * T, method, kw.get("step_mode", "m"),
                         kw.get("window"), kw.get("local_blocks", 1))
    grows = method == "bptt"
    assert (longer["kept"] > 5 * est["kept"]) == grows


def test_available_memory_reads_the_limits_and_the_gpu(tmp_path):
    free, what = available_memory(np)
    assert free > 0 and what
    code = ("import numpy as np; from minirate.backend import available_memory; "
            "print(*available_memory(np), sep='|')")
    r = _python(["-c", code], tmp_path, limit=3 * 2 ** 30)
    free, what = r.stdout.strip().split("|")
    assert what == "under RLIMIT_AS" and 0 < int(free) < 3 * 2 ** 30, r.stdout + r.stderr

    class Pool:
        def free_bytes(self):
            return 7

    gpu = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (123, 999))),
        get_default_memory_pool=Pool)
    assert available_memory(gpu) == (130, "free on the GPU")
    assert available_memory(types.SimpleNamespace()) is None     # a stand-in that cannot tell


# -- train.py and the studies refuse a step that cannot fit ----------------------------------
def test_a_huge_T_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    r = _python(["train.py", *QUICK, "--T", "100000", "--out", out], tmp_path)
    line = _one_error_line(r)
    assert line.startswith("error: one training step needs about "), line
    assert "kept for backward by bptt at T=100000, batch 128" in line
    for option in ("--batch-size", "--T", "--method rate_m", "--window", "--local-blocks"):
        assert option in line, line
    assert "epoch 1/1" not in r.stdout and "model:" not in r.stdout and not out.exists()


def test_a_step_over_the_address_space_limit_is_refused(tmp_path):
    """Under RLIMIT_AS of 3 GiB, batch 1000 at T=8 (about 12 GiB kept by bptt) is refused with
    the limit named, before any epoch."""
    r = _python(["train.py", *QUICK, "--T", "8", "--batch-size", "1000", "--out",
                 tmp_path / "run"], tmp_path, limit=3 * 2 ** 30)
    line = _one_error_line(r)
    assert "available (under RLIMIT_AS)" in line and "--batch-size" in line, line
    assert "epoch 1/1" not in r.stdout


def test_an_allocation_that_fails_in_a_step_ends_with_one_line(tmp_path):
    """The estimate lets the step through; the LIF forward then fails to allocate."""
    code = ("import runpy, sys\n"
            "from minirate.layers.lif import LIF\n"
            "def fail(*a, **k):\n    raise MemoryError\n"
            "LIF.forward = fail\n"
            f"sys.argv = ['train.py'] + {QUICK!r} + ['--T', '2', '--batch-size', '8', "
            f"'--max-steps', '1', '--out', {str(tmp_path / 'run')!r}]\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    line = _one_error_line(_python(["-c", code], tmp_path))
    assert line.startswith("error: out of memory during a training step (estimated: at "
                           "least "), line
    assert "available before training); lower it with --batch-size, --T" in line, line


def test_memory_time_refuses_a_cell_that_cannot_fit(tmp_path):
    out = tmp_path / "study"
    r = _python(["-m", "minirate.study", "memory-time", "--methods", "rate_m,bptt", "--T",
                 "1,100000", "--out", out], tmp_path)
    line = _one_error_line(r)
    assert line.startswith("error: one training step needs about ") and "by bptt at T=100000" \
        in line and line.endswith("--methods without bptt"), line
    assert not out.exists()


def test_memory_time_turns_a_failed_allocation_into_one_line(tmp_path, monkeypatch):
    from minirate.layers.lif import LIF
    from minirate.memory import MemoryShortage
    from minirate.study.memory_time import memory_time

    def fail(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(LIF, "forward", fail)
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(MemoryShortage, match=r"out of memory during a training step \(bptt at "
                                             r"T=2, estimated: at least .*--methods without bptt"):
        memory_time(x, np.zeros(2, np.int64), ["bptt"], [2], steps=1, warmup=0)


# -- an input the architecture cannot take ---------------------------------------------------
@pytest.mark.parametrize("arch,channels,size,smallest", [
    ("vggsnn_cifar", 2, 2, 8), ("vgg11", 3, 8, 16), ("alexnet", 3, 2, 4), ("vgg11_ws", 2, 4, 8)])
def test_too_small_inputs_name_the_smallest_size(arch, channels, size, smallest):
    model = build_model(arch, 10, 0.25, in_channels=channels)
    why = input_size_problem(model, arch, channels, size, "test")
    assert why.startswith(f"--arch {arch} cannot take {size}x{size} input (test): ")
    assert why.endswith(f"the smallest size it takes is {smallest}x{smallest}"), why
    assert input_size_problem(model, arch, channels, smallest, "test") is None
    assert input_size_problem(model, arch, channels, 32, "test") is None


def test_train_refuses_frames_too_small_before_reading_data(tmp_path):
    data = tmp_path / "data"
    r = _python(["train.py", "--dataset", "cifar10dvs", "--arch", "vggsnn_cifar",
                 "--frame-size", "2", "--roll", "1", "--data-dir", data, "--out",
                 tmp_path / "run"], tmp_path)
    assert r.returncode == 2
    assert _one_error_line(r) == (
        "error: --arch vggsnn_cifar cannot take 2x2 input (event frames, --frame-size 2): "
        "pooling window 2 does not fit input 1 with padding 0; the smallest size it takes is "
        "8x8 (see train.py --help)")
    assert not data.exists() and not (tmp_path / "run").exists()
    r = _python(["train.py", "--dataset", "imagenet", "--arch", "alexnet", "--image-size", "3",
                 "--data-dir", data, "--out", tmp_path / "run"], tmp_path)
    assert "alexnet cannot take 3x3 input (--image-size 3)" in _one_error_line(r)


# -- a rank that stops answering -------------------------------------------------------------
class SilentComm:
    """An MPI communicator whose all-reduces never complete: the other ranks are gone."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Iallreduce(self, send, recv):
        return types.SimpleNamespace(Test=lambda: False)


@pytest.mark.parametrize("rank,size,who", [(0, 2, "rank 1"), (1, 2, "rank 0"),
                                           (0, 4, "another rank")])
def test_no_answer_names_the_silent_rank_where_it_can_be_known(rank, size, who):
    comm = Communicator(SilentComm(rank, size), timeout=0.05)
    with pytest.raises(DistributedError) as e:
        comm.sum_numbers(1.0)
    assert str(e.value) == (f"no answer from {who} within 0.05 s (sum of counters); it has "
                            f"probably stopped: see that rank's own message above for why, then "
                            f"run the same command again with --resume auto to continue from "
                            f"the last checkpoint")
