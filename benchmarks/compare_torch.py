"""minirate's training step beside the same step written in plain PyTorch, one run, one device.

    python benchmarks/compare_torch.py --T 4 8 --threads 2 --repeats 3            # CPU
    python benchmarks/compare_torch.py --device cuda --T 4 8 --methods bptt rate_m  # GPU (CuPy)
    python benchmarks/compare_torch.py --check      # float64: both give the same gradients

Both sides: spiking resnet18 (CIFAR stem), LIF decay 0.2 / threshold 1 / soft detached reset,
sigmoid surrogate α = 4, batchnorm in training mode, the image repeated over T steps,
cross-entropy; one forward + backward (no optimizer step), median of --repeats after a warm-up,
the two frameworks interleaved.

    bptt     output averaged over T; batchnorm over T·B (cuDNN's on the GPU); autograd through the
             Python loop over T.
    rate_m   rate-based backpropagation as minirate's rate_m: a spike pass without autograd that
             keeps per neuron r = mean_t s_t and e = mean_t sg_t ε_t (ε_{t+1} = 1 + λ ε_t) and
             per channel the batch statistics (μ_s, σ²_s), then one autograd pass on the image:
             LIF outputs r with backward dI = dr · e; batchnorm normalises with (μ_s, σ²_s)
             substituted straight-through, γ (x − (μ_s + μ(x) − sg[μ(x)])) /
             sqrt(σ²_s + v(x) − sg[v(x)] + eps) + β (sg: stop-gradient); loss gradient / T.

--check runs both methods in float64 on the CPU at batch 2, T = 2, from the same weights, and
prints the worst relative gradient difference (it must be rounding only).

On the GPU (--device cuda, batch 128 by default): TF32 is off for both unless --tf32 (PyTorch:
torch.backends.{cuda.matmul,cudnn}.allow_tf32; CuPy: CUPY_TF32=1, set before CuPy loads), and
each side's peak memory during the step is measured above its level before the step:
torch.cuda.max_memory_allocated for PyTorch, the CuPy memory pool's bytes in use for minirate.
torch is a benchmark-only dependency (CPU: `pip install torch==2.13.0`). --threads gives both
the same number of CPU threads: torch's intra-op pool, and minirate's CPU threads.
"""
import json
import os
import sys
import time

if __name__ == "__main__":            # BLAS pools are sized, and CUPY_TF32 read, when they load
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[i + 1]
    os.environ["CUPY_TF32"] = "1" if "--tf32" in sys.argv else "0"

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.backend import (DeviceError, cpu_threads, get_xp, set_cpu_threads,  # noqa: E402
                              synchronize)
from minirate.cli import ArgumentParser, positive_int  # noqa: E402
from minirate.layers.winograd import ALGOS, set_conv_algo  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402
from minirate.study.common import peak_step_bytes  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("error: this benchmark needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
    sys.exit(1)

DECAY, THETA, ALPHA, EPS, MOMENTUM = 0.2, 1.0, 4.0, 1e-5, 0.1
MiB = 2 ** 20


def surrogate(x):
    """sg(x) = α σ(αx)(1 − σ(αx)), the derivative of the sigmoid surrogate."""
    sig = torch.sigmoid(ALPHA * x)
    return ALPHA * sig * (1 - sig)


class SpikeFn(torch.autograd.Function):
    """H(u − θ) forward, the sigmoid surrogate backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate(x)


class RateFn(torch.autograd.Function):
    """Rate pass of a LIF layer: value r (from the spike pass), backward dI = dr · e."""

    @staticmethod
    def forward(ctx, I, r, e):
        ctx.save_for_backward(e)
        return r.clone()

    @staticmethod
    def backward(ctx, grad):
        (e,) = ctx.saved_tensors
        return grad * e, None, None


class LIF(nn.Module):
    """mode 'bptt': the T-step loop under autograd; 'spike': the same loop without autograd,
    keeping r and e; 'rate': RateFn on the rate pass's input."""

    def __init__(self, T):
        super().__init__()
        self.T, self.mode, self.r, self.e = T, "bptt", None, None

    def forward(self, I):                       # (T*B, ...) -> (T*B, ...); 'rate': (B, ...)
        if self.mode == "rate":
            return RateFn.apply(I, self.r, self.e)
        I = I.view(self.T, -1, *I.shape[1:])
        u, out = None, []
        r_sum = e_sum = eps_t = None
        for t in range(self.T):
            u = I[t] if u is None else DECAY * u + I[t]
            s = SpikeFn.apply(u - THETA)
            out.append(s)
            if self.mode == "spike":            # soft detached reset: κ = 1, ε_{t+1} = 1 + λ ε_t
                eps_t = 1.0 if eps_t is None else 1.0 + DECAY * eps_t
                sg = surrogate(u - THETA) * eps_t
                r_sum, e_sum = (s, sg) if r_sum is None else (r_sum + s, e_sum + sg)
            u = u - s.detach()
        if self.mode == "spike":
            self.r, self.e = r_sum / self.T, e_sum / self.T
        return torch.cat(out)


class BN(nn.BatchNorm2d):
    """mode 'bptt': nn.BatchNorm2d (cuDNN on the GPU); 'spike': batch statistics kept and the
    running ones updated; 'rate': the kept statistics, substituted straight-through."""

    def __init__(self, c):
        super().__init__(c, eps=EPS, momentum=MOMENTUM)
        self.mode, self.stats = "bptt", None

    def forward(self, x):
        if self.mode == "bptt":
            return super().forward(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        if self.mode == "spike":
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - MOMENTUM).add_(MOMENTUM * mean)
                self.running_var.mul_(1 - MOMENTUM).add_(MOMENTUM * var * n / (n - 1))
                self.num_batches_tracked += 1
            self.stats = (mean, var)
            return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, EPS)
        mean_s, var_s = self.stats
        m = (mean_s + mean - mean.detach()).view(1, -1, 1, 1)
        v = (var_s + var - var.detach()).view(1, -1, 1, 1)
        return ((x - m) * torch.rsqrt(v + EPS) * self.weight.view(1, -1, 1, 1)
                + self.bias.view(1, -1, 1, 1))


class Block(nn.Module):
    def __init__(self, c_in, c, stride, T):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = BN(c)
        self.spike1 = LIF(T)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = BN(c)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), BN(c))
        self.spike2 = LIF(T)

    def forward(self, x):
        out = self.bn2(self.conv2(self.spike1(self.bn1(self.conv1(x)))))
        return self.spike2(out + self.shortcut(x))


def torch_resnet18(T, num_classes=10):
    layers, c_in = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), BN(64), LIF(T)], 64
    for i, c in enumerate([64, 128, 256, 512]):
        for j in range(2):
            layers.append(Block(c_in, c, 2 if (j == 0 and i > 0) else 1, T))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def set_mode(net, mode):
    for m in net.modules():
        if isinstance(m, (LIF, BN)):
            m.mode = mode


def torch_step(net, method, T, x, y):
    """One training step's forward and backward (gradients into net's .grad)."""
    B = x.shape[0]
    if method == "bptt":
        set_mode(net, "bptt")
        out = net(x.repeat(T, 1, 1, 1)).view(T, B, -1).mean(0)
        F.cross_entropy(out, y).backward()
        return
    set_mode(net, "spike")
    with torch.no_grad():
        net(x.repeat(T, 1, 1, 1))
    set_mode(net, "rate")
    (F.cross_entropy(net(x), y) / T).backward()        # the published 1/T on the loss gradient


def copy_weights(model, net):
    """minirate's weights and buffers into the torch net (the same order, checked shapes)."""
    ours, theirs = list(model.state_dict().values()), list(net.state_dict().values())
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    with torch.no_grad():
        for a, t in zip(ours, theirs):
            assert tuple(a.shape) == tuple(t.shape), (a.shape, t.shape)
            t.copy_(torch.as_tensor(np.array(a)))


def check(methods):
    """float64, CPU: the worst relative difference between the two sides' gradients."""
    rng = np.random.default_rng(0)
    T, B = 2, 2
    x = rng.normal(size=(B, 3, 32, 32))
    y = rng.integers(0, 10, B)
    worst = {}
    for name in methods:
        model = build_model("resnet18").to(np, np.float64)
        net = torch_resnet18(T).double().train()
        copy_weights(model, net)
        model.zero_grad()
        make_method(name, model, T).step(x, y)
        net.zero_grad()
        torch_step(net, name, T, torch.from_numpy(x), torch.from_numpy(y))
        ours = [g for _, _, g, _ in model.parameters()]
        theirs = [p.grad.numpy() for p in net.parameters()]
        worst[name] = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
                          for a, b in zip(ours, theirs))
    return worst


def parse_args(argv=None):
    p = ArgumentParser(prog="compare_torch.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--methods", nargs="+", choices=("bptt", "rate_m"), default=["bptt", "rate_m"])
    p.add_argument("--T", type=positive_int, nargs="+", default=[4, 8])
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default: 128 on cuda, 16 on cpu")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products on both sides")
    p.add_argument("--conv-algo", choices=ALGOS, default="im2col",
                   help="minirate's 3x3 stride-1 convolutions (PyTorch's side is unchanged)")
    p.add_argument("--check", action="store_true", help="float64 gradient agreement, CPU")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    if a.batch_size is None:
        a.batch_size = 128 if a.device == "cuda" else 16
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.check:
        for name, err in check(a.methods).items():
            print(f"{name}: worst relative gradient difference minirate vs PyTorch (float64) "
                  f"{err:.1e}")
        return 0
    try:
        xp = get_xp(a.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: PyTorch sees no GPU", file=sys.stderr)
        return 1
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
        set_cpu_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, a.batch_size)
    xm, ym = xp.asarray(x), xp.asarray(y)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    where = (f"GPU {torch.cuda.get_device_name()}, CuPy {xp.__version__}, cuDNN "
             f"{torch.backends.cudnn.version()}" if a.device == "cuda"
             else f"CPU, {torch.get_num_threads()} torch threads, {cpu_threads()} minirate threads")
    print(f"# resnet18, batch {a.batch_size}, float32, TF32 {'on' if a.tf32 else 'off'} for both, "
          f"torch {torch.__version__}, {where}; minirate convolutions {a.conv_algo}; median of "
          f"{a.repeats} after a warm-up\n")
    print("| method | T | minirate ms/step | PyTorch ms/step | time ratio | minirate peak MiB |"
          " PyTorch peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in a.methods:
        for T in a.T:
            try:
                row = measure(a, xp, dev, name, T, (xm, ym), (xt, yt))
            except Exception as e:      # e.g. out of memory: the other rows still come
                print(f"| {name} | {T} | failed: {type(e).__name__}: {str(e)[:100]} | | | | | |",
                      flush=True)
                rows.append({"method": name, "T": T, "error": f"{type(e).__name__}: {e}"})
                continue
            rows.append(row)
            if a.device == "cuda":
                mem = (f"{row['minirate_peak'] / MiB:.0f} | {row['torch_peak'] / MiB:.0f} | "
                       f"{row['memory_ratio']:.2f}")
            else:
                mem = "- | - | -"
            m, t = row["minirate_s"], row["torch_s"]
            print(f"| {name} | {T} | {1e3 * m:.1f} | {1e3 * t:.1f} | {m / t:.2f} | {mem} |",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "rows": rows}, f, indent=1)
    return 0


def measure(a, xp, dev, name, T, minirate_batch, torch_batch):
    """One row: both sides' median step time (and on the GPU their peak step memory)."""
    (xm, ym), (xt, yt) = minirate_batch, torch_batch
    model = set_conv_algo(build_model("resnet18").to(xp), a.conv_algo)
    method = make_method(name, model, T)
    net = torch_resnet18(T).to(dev).train()
    copy_weights(build_model("resnet18"), net)

    def step_minirate():
        model.zero_grad()
        method.step(xm, ym)
        synchronize(xp)

    def step_torch():
        net.zero_grad(set_to_none=False)
        torch_step(net, name, T, xt, yt)
        if a.device == "cuda":
            torch.cuda.synchronize()

    step_minirate(), step_torch()                     # warm-up both
    tm, tt = [], []
    for _ in range(a.repeats):
        tm.append(_once(step_minirate))
        tt.append(_once(step_torch))
    m, t = float(np.median(tm)), float(np.median(tt))
    row = {"method": name, "T": T, "minirate_s": m, "torch_s": t, "time_ratio": m / t}
    if a.device == "cuda":
        row["minirate_peak"] = peak_step_bytes(xp, step_minirate)
        row["torch_peak"] = torch_peak_bytes(step_torch)
        row["memory_ratio"] = row["minirate_peak"] / row["torch_peak"]
    return row


def torch_peak_bytes(fn):
    """Peak bytes PyTorch's allocator holds for tensors while fn() runs, above the level before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
