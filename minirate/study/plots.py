"""The studies' figures (matplotlib, used only here, imported when a figure is drawn)."""
import numpy as np

from .common import MiB


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")                      # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_memory_time(rows, path, title):
    """Three panels against T, one colour per method: step time; memory in MiB, kept for
    backward (solid) and peak (dashed); MACs (solid) and ACs (dashed) per step."""
    plt = _pyplot()
    fig, (ax_t, ax_m, ax_c) = plt.subplots(1, 3, figsize=(16, 4.4))
    for k, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        rs = [r for r in rows if r["method"] == name]
        T = [r["T"] for r in rs]
        # later methods drawn thinner, so that equal curves (rate_m, rate_s memory) stay visible
        style = dict(color=f"C{k % 10}", lw=max(3.0 - 0.8 * k, 1.0), ms=max(9 - 2.5 * k, 4))
        ax_t.plot(T, [r["step_time_s"] for r in rs], "o-", label=name, **style)
        ax_m.plot(T, [r["kept_bytes"] / MiB for r in rs], "o-", **style)
        ax_m.plot(T, [r["peak_bytes"] / MiB for r in rs], "s--", **style)
        ax_c.plot(T, [r["macs"] / 1e9 for r in rs], "o-", **style)
        ax_c.plot(T, [r["acs"] / 1e9 for r in rs], "s--", **style)
    ax_t.set(xlabel="time steps T", ylabel="step time (s, median)", title="step time")
    ax_m.set(xlabel="time steps T", ylabel="memory (MiB)",
             title="bytes kept for backward (solid), peak during a step (dashed)")
    ax_c.set(xlabel="time steps T", ylabel="operations per step (10⁹)",
             title="MACs (solid), ACs on spike inputs (dashed)")
    for ax in (ax_t, ax_m, ax_c):
        ax.set_xticks(sorted({r["T"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)                     # one legend: the colours; styles in the titles
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradients(rows, path, title):
    """Cosine with BPTT against T: one panel per method, one line per conv/linear weight
    coloured by depth, and the whole gradient in black."""
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n_depth = 1 + max(r["depth"] for r in rows if r["depth"] is not None)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods) + 1, 4.2),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], methods):
        rs = [r for r in rows if r["method"] == name]
        for d in range(n_depth):
            line = [r for r in rs if r["depth"] == d]
            ax.plot([r["T"] for r in line], [r["cosine"] for r in line], ".-", lw=1.2,
                    color=cmap(d / max(n_depth - 1, 1)))
        line = [r for r in rs if r["param"] == "(all)"]
        ax.plot([r["T"] for r in line], [r["cosine"] for r in line], "k--", lw=2,
                label="all parameters")
        ax.set(xlabel="time steps T", title=f"{name} vs BPTT ({rs[0]['bptt_mode']})")
        ax.set_xticks(sorted({r["T"] for r in rs}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("cosine similarity with the BPTT gradient")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(n_depth - 1, 1)))
    fig.colorbar(sm, ax=list(axes[0]), label="conv/linear weight depth (0 = input)")
    fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_firing(rows, path, title):
    """Heat map: LIF layers (rows, input side on top) by time step, plus the all-step mean."""
    plt = _pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    rate = {(r["layer"], r["step"]): r["rate"] for r in rows}
    grid = np.array([[rate[layer, t] for t in steps] for layer in layers])
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(steps), 1.2 + 0.4 * len(layers)))
    im = ax.imshow(grid, cmap="magma", vmin=0, vmax=max(grid.max(), 1e-3), aspect="auto")
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * grid.max() else "black")
    ax.set_xticks(range(len(steps)), [str(t) for t in steps])
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set(xlabel="time step (all = mean over steps)", ylabel="LIF layer")
    fig.colorbar(im, ax=ax, label="mean firing rate")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _heat(ax, grid, Ks, Ns, title, fmt, cmap):
    """One heat map: K across, N down; empty (NaN) cells left blank."""
    im = ax.imshow(grid, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            r, g, b, _ = im.cmap(im.norm(v))        # light text on a dark cell and vice versa
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                    color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
        else:
            ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="grey")
    ax.set_xticks(range(len(Ks)), [str(k) for k in Ks])
    ax.set_yticks(range(len(Ns)), [str(n) for n in Ns])
    ax.set(xlabel="window K (time steps per truncated window)", ylabel="local blocks N",
           title=title)
    ax.figure.colorbar(im, ax=ax)


def plot_design_space(rows, path, title):
    """Two figures of heat maps over (K, N): PATH (accuracy, kept and peak memory, step time)
    and PATH with _costs (MACs, ACs, memory accesses). Returns both paths."""
    plt = _pyplot()
    Ks = sorted({r["K"] for r in rows})
    Ns = sorted({r["N"] for r in rows})

    def grid(key, scale=1.0):
        g = np.full((len(Ns), len(Ks)), np.nan)
        for r in rows:
            if r[key] is not None:
                g[Ns.index(r["N"]), Ks.index(r["K"])] = r[key] * scale
        return g

    panels = [[("accuracy", 1.0, "test accuracy", "{:.3f}", "viridis"),
               ("kept_bytes", 1 / MiB, "bytes kept for backward (MiB)", "{:.1f}", "magma_r"),
               ("peak_bytes", 1 / MiB, "peak memory of a step (MiB)", "{:.1f}", "magma_r"),
               ("step_time_s", 1.0, "step time (s, median)", "{:.3f}", "magma_r")],
              [("macs", 1e-9, "MACs per step (10⁹)", "{:.4g}", "magma_r"),
               ("acs", 1e-9, "ACs per step (10⁹, spike inputs)", "{:.4g}", "magma_r"),
               ("mem_bytes", 1 / MiB, "memory accesses per step (MiB)", "{:.4g}", "magma_r")]]
    paths = [path, path[:-len(".png")] + "_costs.png"]
    for out, panel in zip(paths, panels):
        fig, axes = plt.subplots(1, len(panel), figsize=(4.6 * len(panel), 3.2 + 0.3 * len(Ns)),
                                 squeeze=False, layout="constrained")
        for ax, (key, scale, name, fmt, cmap) in zip(axes[0], panel):
            _heat(ax, grid(key, scale), Ks, Ns, name, fmt, cmap)
        fig.suptitle(title)
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return paths
