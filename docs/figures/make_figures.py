"""The figures of docs/walkthrough.md, made by minirate itself on the bundled CIFAR-10 sample.

    python docs/figures/make_figures.py                      # docs/figures/*.png, about 2 min
    python docs/figures/make_figures.py --quick --out DIR    # tiny sizes, seconds (the test's run)

Every figure starts from a fresh `small` network (models.py, seed 0) and the first test images
of `load_cifar("cifar10-sample", None)`, normalised as training normalises them:

    lif_neuron.png    one LIF neuron inside that network, stepped with `lif_step` over T steps:
                      its input current I_t, its potential u_t before and u⁺_t after the reset
                      against the threshold θ, its spikes s_t and the surrogate derivative
                      sg_t = sg(u_t − θ) (surrogate.py) that backward uses in place of dH/du
    memory_time.png   bytes kept for backward (`method.kept_bytes`, counted from the arrays) and
                      step time against T, per method (study/memory_time.py; the least of
                      three runs' medians, since a shared machine only ever adds time)
    gradients.png     cosine and norm ratio of each method's gradient with BPTT's against T, in
                      float64 (study/gradients.py; sltt and ottt against single-step BPTT on
                      their own per-step loss)

It also prints the numbers the walkthrough quotes: the bytes kept for backward by resnet18 at
batch 16, counted from the layer shapes (`costs.step_memory`, no training step run), and the
measured rows of memory_time.png beside that same count.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from minirate.backend import set_cpu_threads                       # noqa: E402
from minirate.costs import _kept_numbers, step_memory, trace       # noqa: E402
from minirate.data.augment import normalize                        # noqa: E402
from minirate.data.cifar import load_cifar                         # noqa: E402
from minirate.layers.lif import LIF, lif_step                      # noqa: E402
from minirate.layers.surrogate import surrogate_grad               # noqa: E402
from minirate.methods.common import input_over_time                # noqa: E402
from minirate.models import build_model                            # noqa: E402
from minirate.study import gradient_alignment, memory_time         # noqa: E402

MiB = 2 ** 20
# the methods of memory_time.png, as study specs (study/common.py: parse_method_spec)
MEMORY_METHODS = ["bptt", "bptt:pack", "bptt:blocks", "tbptt:K=2", "rate_m", "rate_s", "sltt",
                  "ottt"]
GRADIENT_METHODS = ["rate_m", "rate_s", "tbptt:K=2", "sltt", "ottt", "avg_limit"]
# one colour and marker per method, the same in both figures
STYLE = {name: dict(color=f"C{k}", marker="osD^v<>p*"[k], ms=5, lw=1.5)
         for k, name in enumerate(MEMORY_METHODS + ["avg_limit"])}
# full size and --quick: network width, batch, the T axis, timed steps (their median), runs
# of the whole memory study (the least median), the neuron's steps, the T axis of the gradients
SIZES = {False: dict(width=1.0, batch=16, Ts=[1, 2, 4, 8], steps=2, warmup=1, repeats=3,
                     neuron_T=24, grad_Ts=[1, 2, 4, 8]),
         True: dict(width=0.25, batch=2, Ts=[1, 2], steps=1, warmup=0, repeats=1, neuron_T=6,
                    grad_Ts=[1, 2])}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    """Lay out, write as PNG and close the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def plot_against_T(rows, panels):
    """One line per method over T on each panel: panels [(axes, row -> value)]."""
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        for ax, value in panels:
            ax.plot([r["T"] for r in rs], [value(r) for r in rs], label=name, **STYLE[name])


def sample_batch(n):
    """The first n test images of the bundled sample, float32 (n, 3, 32, 32), and labels."""
    _, _, x_test, y_test, _ = load_cifar("cifar10-sample", None)
    return normalize(x_test[:n], "cifar10-sample"), y_test[:n]


# -- (a) one neuron ---------------------------------------------------------------------------
def neuron_currents(model, x, T):
    """{LIF layer name: its input current I over T steps, (T, B, ...)} from one multi-step
    forward of `model` on the static batch x (caches thrown away)."""
    names = {id(m): name for name, m in model.named_modules()}
    currents = {}

    def run(layer, h):
        if isinstance(layer, LIF):
            # (T*B, C, H, W) -> (T, B, C, H, W)
            currents[names[id(layer)]] = h.reshape(T, -1, *h.shape[1:])
            return layer.forward(h, T)[0]
        return layer.forward(h)[0]

    model.forward(input_over_time(x, T), run)
    return currents


def pick_neuron(I, p):
    """A typical firing neuron of I (T, n): among those firing at a rate in [0.2, 0.6], the one
    whose current varies over time by the median amount (the most varying, if none fires so)."""
    T = I.shape[0]
    u, rate = None, np.zeros(I.shape[1])
    for t in range(T):
        s, u, _ = lif_step(I[t], u, p)
        rate += s / T
    spread = I.std(axis=0)
    ok = np.flatnonzero((rate >= 0.2) & (rate <= 0.6))
    if not len(ok):
        return int(np.argmax(spread))
    return int(ok[np.argsort(spread[ok])[len(ok) // 2]])


def figure_neuron(path, width, T, x):
    model = build_model("small", 10, width, seed=0)
    currents = neuron_currents(model, x[:1], T)
    layer_name = list(currents)[len(currents) // 2]          # a LIF layer in the middle
    layer = dict(model.named_modules())[layer_name]
    p = layer.p
    I_all = currents[layer_name].reshape(T, -1)              # (T, 1, C, H, W) -> (T, neurons)
    I = I_all[:, pick_neuron(I_all, p)]                      # (T,)

    u_post, us, posts, spikes = None, [], [], []
    for t in range(T):                                       # the neuron stepped on its own
        s, u_post, cache = lif_step(I[t:t + 1], u_post, p)
        us.append(cache.u[0])
        posts.append(u_post[0])
        spikes.append(s[0])
    u, u_plus, s = np.array(us), np.array(posts), np.array(spikes)
    sg = surrogate_grad(u - p.threshold, p.surrogate, p.alpha)

    plt = pyplot()
    t = np.arange(1, T + 1)
    fig, (ax_u, ax_s, ax_g) = plt.subplots(3, 1, figsize=(8, 5.6), sharex=True,
                                           gridspec_kw=dict(height_ratios=[2.2, 0.8, 1.2]))
    ax_u.bar(t, I, width=0.35, color="0.75", label="input current $I_t$")
    ax_u.plot(t, u, "o-", color="C0", label="potential $u_t$ (before reset)")
    ax_u.plot(t, u_plus, "s--", color="C1", ms=4, label="$u^+_t$ (after reset)")
    ax_u.axhline(p.threshold, color="C3", lw=1, label=r"threshold $\theta$")
    ax_u.set_ylabel("value")
    ax_u.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                frameon=False)
    fig.suptitle(f"one LIF neuron of '{layer_name}' ({p.reset} reset, λ = {p.decay}, "
                 f"{p.surrogate} surrogate α = {p.alpha})", fontsize=9)
    ax_s.stem(t, s, basefmt=" ")
    ax_s.set(ylabel="spike $s_t$", ylim=(-0.1, 1.3), yticks=[0, 1])
    ax_g.plot(t, sg, "o-", color="C2")
    ax_g.set(ylabel=r"$sg(u_t-\theta)$", xlabel="time step t")
    for ax in (ax_u, ax_s, ax_g):
        ax.grid(alpha=0.3)
    save(fig, path)
    return dict(layer=layer_name, rate=float(s.mean()))


# -- (b) memory and time ----------------------------------------------------------------------
def figure_memory_time(path, x, y, width, Ts, steps, warmup, repeats):
    """The study run `repeats` times over all methods; each cell's step time is the least of its
    medians (the machine's other work only ever adds time), its bytes are the same every time."""
    rows = None
    for _ in range(repeats):
        again = memory_time(x, y, MEMORY_METHODS, Ts, "small", width, 10, steps, warmup, seed=0)
        if rows is None:
            rows = again
            continue
        for row, new in zip(rows, again):
            assert (row["method"], row["T"], row["kept_bytes"]) == \
                (new["method"], new["T"], new["kept_bytes"])
            row["step_time_s"] = min(row["step_time_s"], new["step_time_s"])
    plt = pyplot()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    plot_against_T(rows, [(ax_m, lambda r: r["kept_bytes"] / MiB),
                          (ax_t, lambda r: r["step_time_s"])])
    ax_m.set(xlabel="time steps T", ylabel="MiB", title="bytes kept for backward")
    ax_t.set(xlabel="time steps T", ylabel="seconds", title="one training step")
    for ax in (ax_m, ax_t):
        ax.set_xticks(Ts)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=8)
    fig.suptitle(f"small (width {width}), batch {len(y)}, float32, CPU, CIFAR-10 sample",
                 fontsize=10)
    save(fig, path)
    return rows


# -- (c) gradient alignment ------------------------------------------------------------------
def figure_gradients(path, x, y, width, Ts):
    model = build_model("small", 10, width, seed=0).to(np, np.float64)
    rows = gradient_alignment(model, x.astype(np.float64), y, Ts, GRADIENT_METHODS)
    rows = [r for r in rows if r["param"] == "(all)"]
    plt = pyplot()
    fig, (ax_c, ax_n) = plt.subplots(1, 2, figsize=(10, 4))
    plot_against_T(rows, [(ax_c, lambda r: r["cosine"]), (ax_n, lambda r: r["norm_ratio"])])
    ax_c.set(xlabel="time steps T", ylabel="cosine", title="cos(g_method, g_BPTT), all parameters")
    ax_n.set(xlabel="time steps T", ylabel="|g_method| / |g_BPTT|", title="norm ratio")
    for ax in (ax_c, ax_n):
        ax.set_xticks(Ts)
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    fig.suptitle(f"small (width {width}), batch {len(y)}, float64, fresh weights, "
                 f"CIFAR-10 sample", fontsize=10)
    save(fig, path)
    return rows


# -- numbers the walkthrough quotes -----------------------------------------------------------
COUNTED = [("bptt", "bptt", {}), ("bptt --pack-spikes", "bptt", dict(pack_spikes=True)),
           ("bptt --recompute-blocks", "bptt", dict(recompute_blocks=True)),
           ("bptt s --recompute-window 2", "bptt", dict(step_mode="s", recompute_window=2)),
           ("tbptt K=2", "tbptt", dict(window=2)), ("rate_m", "rate_m", {}),
           ("sltt", "sltt", {}), ("ottt", "ottt", {})]


def counted_table(arch, batch, Ts):
    """Lines of bytes kept for backward by `arch` at `batch`, counted from the layer shapes."""
    model = build_model(arch, 10, 1.0, seed=0)
    ops = trace(model, (3, 32, 32))
    real, spikes, lif = _kept_numbers(ops)
    lines = [f"{arch}, batch {batch}, float32: {lif} LIF neurons per sample; one step's caches "
             f"hold {real} real numbers and {spikes} spikes per sample "
             f"({(real + spikes) / lif:.2f} numbers, {4 * (real + spikes) / lif:.2f} bytes per "
             f"LIF neuron; {(4 * real + spikes / 8) / lif:.2f} bytes with spikes as bits)",
             "kept MiB at T = " + ", ".join(map(str, Ts))]
    for label, method, kw in COUNTED:
        kept = []
        for T in Ts:
            kw_T = {k: min(v, T) if k in ("window", "recompute_window") else v
                    for k, v in kw.items()}
            kept.append(step_memory(model, (batch, 3, 32, 32), T, method, ops=ops,
                                    optimizer_copies=0, **kw_T)["kept"] / MiB)
        lines.append(f"  {label:28s} " + "  ".join(f"{v:8.1f}" for v in kept))
    return lines


def measured_beside_counted(rows, width, batch):
    """Lines: each memory_time row's measured kept bytes beside `costs.step_memory`'s count."""
    model = build_model("small", 10, width, seed=0)
    ops = trace(model, (3, 32, 32))
    lines = ["small: measured kept MiB (counted from shapes)"]
    for r in rows:
        spec = r["method"]
        name, *opts = spec.split(":")
        kw = dict(pack_spikes="pack" in opts, recompute_blocks="blocks" in opts)
        window = next((int(o[2:]) for o in opts if o.startswith("K=")), None)
        mode = "s" if name in ("rate_s", "sltt", "ottt") else "m"
        counted = step_memory(model, (batch, 3, 32, 32), r["T"], name, mode, window, ops=ops,
                              optimizer_copies=0, **kw)["kept"]
        lines.append(f"  {spec:12s} T={r['T']}: {r['kept_bytes'] / MiB:7.3f} "
                     f"({counted / MiB:7.3f}),  step {r['step_time_s']:.3f} s")
    return lines


FIGURES = ("lif_neuron", "memory_time", "gradients")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (width 0.25, batch 2, T = 1, 2): checks that the script runs")
    ap.add_argument("--out", default=HERE, help="folder for the PNGs (default: docs/figures)")
    ap.add_argument("--only", default=",".join(FIGURES),
                    help="comma-separated figures to make (default: all): " + ", ".join(FIGURES))
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    a = ap.parse_args(argv)
    only = a.only.split(",")
    unknown = [f for f in only if f not in FIGURES]
    if unknown:
        ap.error(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    size = SIZES[a.quick]
    set_cpu_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    x, y = sample_batch(size["batch"])
    start = time.perf_counter()

    if "lif_neuron" in only:
        info = figure_neuron(os.path.join(a.out, "lif_neuron.png"), size["width"],
                             size["neuron_T"], x)
        print(f"lif_neuron.png: layer {info['layer']}, firing rate {info['rate']:.2f}")
    if "memory_time" in only:
        rows = figure_memory_time(os.path.join(a.out, "memory_time.png"), x, y, size["width"],
                                  size["Ts"], size["steps"], size["warmup"],
                                  size["repeats"])
        print("\n".join(measured_beside_counted(rows, size["width"], size["batch"])))
    if "gradients" in only:
        grads = figure_gradients(os.path.join(a.out, "gradients.png"), x, y, size["width"],
                                 size["grad_Ts"])
        print("gradients.png: cosine with BPTT (all parameters)")
        for r in grads:
            print(f"  {r['method']:10s} T={r['T']}: cos {r['cosine']:.4f}, norm ratio "
                  f"{r['norm_ratio']:.3f}")
    if not a.quick:
        print("\n".join(counted_table("resnet18", 16, [1, 4, 8])))
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
