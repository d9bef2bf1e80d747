"""minirate's BPTT step beside the same step written in plain PyTorch (CPU, autograd), one run.

    python benchmarks/compare_torch.py --T 4 8 --threads 2 --repeats 3

Both sides: spiking resnet18 (CIFAR stem), LIF decay 0.2 / threshold 1 / soft detached reset,
sigmoid surrogate α = 4, batchnorm over T·B in training mode, the image repeated over T steps,
output averaged over T, cross-entropy; one forward + backward (no optimizer step), median of
--repeats after a warm-up, the two frameworks interleaved. torch is a benchmark-only dependency
(`pip install torch==2.13.0`, a CPU build). --threads gives both the same number of threads:
torch's intra-op pool, and minirate's CPU threads (backend.set_cpu_threads; its BLAS then runs
single-threaded inside each of them).
"""
import argparse
import os
import sys
import time

if __name__ == "__main__":            # BLAS thread pools are sized when numpy/torch load
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[i + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import cpu_threads, set_cpu_threads  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("error: this benchmark needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
    sys.exit(1)


class SpikeFn(torch.autograd.Function):
    """H(u - θ) forward, sigmoid surrogate α σ(αx)(1 - σ(αx)) backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(4.0 * x)
        return grad * 4.0 * sig * (1 - sig)


class LIF(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, I):                       # (T*B, ...) -> (T*B, ...)
        I = I.view(self.T, -1, *I.shape[1:])
        u, out = None, []
        for t in range(self.T):
            u = I[t] if u is None else 0.2 * u + I[t]
            s = SpikeFn.apply(u - 1.0)
            out.append(s)
            u = u - s.detach()                  # soft reset, detached
        return torch.cat(out)


class Block(nn.Module):
    def __init__(self, c_in, c, stride, T):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.spike1 = LIF(T)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))
        self.spike2 = LIF(T)

    def forward(self, x):
        out = self.bn2(self.conv2(self.spike1(self.bn1(self.conv1(x)))))
        return self.spike2(out + self.shortcut(x))


def torch_resnet18(T, num_classes=10):
    layers, c_in = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), LIF(T)], 64
    for i, c in enumerate([64, 128, 256, 512]):
        for j in range(2):
            layers.append(Block(c_in, c, 2 if (j == 0 and i > 0) else 1, T))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[4, 8])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
        set_cpu_threads(a.threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, a.batch_size)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    print(f"# resnet18, batch {a.batch_size}, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {cpu_threads()} minirate CPU threads\n")
    print("| T | minirate s/step | PyTorch s/step | minirate / PyTorch |")
    print("|---|---|---|---|")
    for T in a.T:
        model = build_model("resnet18")
        method = make_method("bptt", model, T)
        net = torch_resnet18(T).train()

        def step_minirate():
            model.zero_grad()
            method.step(x, y)

        def step_torch():
            net.zero_grad()
            out = net(xt.repeat(T, 1, 1, 1)).view(T, a.batch_size, -1).mean(0)
            F.cross_entropy(out, yt).backward()

        tm, tt = [], []
        step_minirate(), step_torch()                     # warm-up both
        for _ in range(a.repeats):
            tm.append(_once(step_minirate))
            tt.append(_once(step_torch))
        m, t = float(np.median(tm)), float(np.median(tt))
        print(f"| {T} | {m:.3f} | {t:.3f} | {m / t:.2f} |", flush=True)


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
