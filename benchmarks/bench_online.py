"""Gradients of the per-step-loss methods against BPTT with the same per-step loss, one run.

    python benchmarks/bench_online.py --arch small --width 0.5 --batch-size 16 --T 2 4 6

On one batch of real CIFAR-10 images (float64, the same weights for every method), each method's
gradient is compared with that of BPTT trained on the same loss, (1/T) Σ_t ((1 − λ_L) CE +
λ_L MSE) of the per-step outputs, in the matching step mode: single-step BPTT for rate_s, sltt and
ottt (batchnorm per step), multi-step for rate_m (batchnorm over T·B). Reported: the cosine of
the whole gradient, its norm over BPTT's, and the smallest and median cosine over the tensors.
Rate methods run with scale_grad_by_T off, so that norms compare.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minirate.data.augment import normalize  # noqa: E402
from minirate.data.cifar import DatasetError, load_cifar  # noqa: E402
from minirate.losses import ce_mse  # noqa: E402
from minirate.methods import make_method  # noqa: E402
from minirate.models import build_model  # noqa: E402
from minirate.study.gradients import _alignment, _dots  # noqa: E402

STEP_MODE = {"rate_m": "m", "rate_s": "s", "sltt": "s", "ottt": "s"}


def gradients(model, method, x, y, loss_fn):
    model.zero_grad()
    method.step(x, y, loss_fn)
    return [g.copy() for _, _, g, _ in model.parameters()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="small")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, nargs="+", default=[2, 4, 6])
    p.add_argument("--methods", nargs="+", default=["rate_m", "rate_s", "sltt", "ottt"],
                   choices=sorted(STEP_MODE))
    p.add_argument("--loss-lambda", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "shared", "data", "cifar10-subset"))
    a = p.parse_args()
    try:
        x, y, *_ = load_cifar("cifar10", a.data_dir, download=False)
        source = "CIFAR-10 subset"
    except DatasetError:
        x, y, *_ = load_cifar("cifar10-sample", None)
        source = "bundled CIFAR-10 sample"
    x, y = normalize(x[:a.batch_size]).astype(np.float64), y[:a.batch_size]
    loss_fn = ce_mse(a.loss_lambda)
    model = build_model(a.arch, 10, a.width, seed=a.seed).to(np, np.float64)
    print(f"# {a.arch} width {a.width}, batch {a.batch_size}, {source}, float64, "
          f"per-step loss λ_L = {a.loss_lambda}\n")
    print("| method | T | cosine (all) | norm / BPTT | min cosine per tensor | median |")
    print("|---|---|---|---|---|---|")
    for T in a.T:
        reference = {}
        for name in a.methods:
            mode = STEP_MODE[name]
            if mode not in reference:
                bptt = make_method("bptt", model, T, mode, per_step_loss=True)
                reference[mode] = gradients(model, bptt, x, y, loss_fn)
            method = make_method(name, model, T, mode, scale_grad_by_T=False, per_step_loss=True)
            g_method = gradients(model, method, x, y, loss_fn)
            per_tensor = [_dots(g_m, g_b) for g_m, g_b in zip(g_method, reference[mode])]
            cosines = [_alignment(d)["cosine"] for d in per_tensor]
            whole = _alignment(sum(per_tensor))
            print(f"| {name} | {T} | {whole['cosine']:.4f} | {whole['norm_ratio']:.3f} | "
                  f"{np.nanmin(cosines):.3f} | {np.nanmedian(cosines):.3f} |", flush=True)


if __name__ == "__main__":
    main()
