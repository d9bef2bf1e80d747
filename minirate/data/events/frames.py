"""Events -> T frames of 2 polarity channels, then a bilinear resize.

Integration (a `bincount` per frame, no loop over events). With N events sorted by time, event
i goes to frame k(i) and adds 1 at [k, p, y, x] (p = 0 OFF, 1 ON):

    split_by='count' (OTTT's frames):  k(i) = min(i // (N // T), T - 1)
        equal event counts, the last frame also taking the N mod T remainder;
    split_by='time':  k(i) = min((t_i - t_0) // dt, T - 1),  dt = (t_last - t_0) // T
        equal time slices, the last one closed at t_last.

(SpikingJelly's "frames number" integration splits the same way, and so does the copy of it
that OTTT ships: OTTT-SNN datasets/dataset_utils.py:168-172, used with split_by='number' at
train_cifar10dvs.py:115.) Fewer than T events: event i goes to frame i (count) and the rest
stay 0.

Resize: bilinear, half-pixel centres, no antialiasing, on the float counts (what
F.interpolate(mode='bilinear', align_corners=False) does). This is minirate's choice, not a copy
of a published pipeline. rate-BP (rate-based-backpropagation util/data.py:8-40) loads frames
saved as .pt files by a script it does not publish (so their integration and scale are
unknown) and resizes each frame through ToPILImage -> Resize((48, 48)) -> ToTensor (:14-16,
:28); OTTT does the same with Resize(48) (train_cifar10dvs.py:98-112) on raw counts. On a float
tensor ToPILImage multiplies by 255 and casts to uint8 (a count c becomes 255 c mod 256), makes
the two channels a Pillow "LA" image (OFF as grey, ON as alpha), and Pillow's antialiased
bilinear resize weights the grey channel by the alpha channel. minirate keeps counts as
counts and treats both polarities alike, so its frames are a linear function of the events;
`EventLoader(..., pipeline="ottt")` reproduces OTTT's route (ottt_transform.py) for comparisons.
Output pixel o reads input position
s = (o + 0.5) * in/out - 0.5 (clamped at 0) between its two neighbours floor(s) and
floor(s) + 1 (clamped at the last pixel), weighted 1 - (s - floor(s)) and s - floor(s); first
along y, then along x.
"""
import numpy as np

SPLITS = ("count", "time")


def frame_bounds(t, T, split_by):
    """Frame k holds events bounds[k] <= i < bounds[k+1] (int64 (T+1,)); t sorted, int (N,).

    Both rules give contiguous runs of the time-sorted events:
        count: bounds[k] = min(k * (N // T), N) for k < T (at least 1 event per frame step)
        time:  bounds[k] = first i with t_i - t_0 >= k * dt, i.e. k(i) >= k
    and bounds[T] = N (the last frame takes the remainder).
    """
    n = len(t)
    k = np.arange(T + 1)
    if split_by == "count":
        bounds = np.minimum(k * max(n // T, 1), n)
    elif split_by == "time":
        if n == 0:
            return np.zeros(T + 1, np.int64)
        dt = max((int(t[-1]) - int(t[0])) // T, 1)
        bounds = np.searchsorted(t, t[0] + k * dt, side="left")
    else:
        raise ValueError(f"unknown split {split_by!r}; choose one of {', '.join(SPLITS)}")
    bounds[0], bounds[T] = 0, n
    return bounds


def integrate(t, x, y, on, T, H, W, split_by="count"):
    """Event counts per frame: float32 (T, 2, H, W); channel 0 OFF, channel 1 ON.

    t, x, y, on: int arrays (N,) sorted by t; x in [0, W), y in [0, H), on in {0, 1}.
    One bincount per frame over its run of events (a loop over T, not over events: it keeps
    every temporary at the size of one frame's events, which is what makes this fast).
    """
    bounds = frame_bounds(np.asarray(t), T, split_by)
    out = np.empty((T, 2 * H * W), np.float32)
    for k in range(T):
        s = slice(bounds[k], bounds[k + 1])
        pixel = (on[s].astype(np.int64) * H + y[s]) * W + x[s]      # index into (2, H, W)
        out[k] = np.bincount(pixel, minlength=2 * H * W)
    return out.reshape(T, 2, H, W)


def bilinear_taps(n_in, n_out):
    """For each output pixel o: its two input neighbours i0, i1 (int64 (n_out,)) and the weight
    w of i1 (float32 (n_out,)), so that out[o] = (1 - w) in[i0] + w in[i1]."""
    s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (s - i0).astype(np.float32)


def resize(frames, size):
    """Bilinear resize of the last two axes: (..., H, W) -> (..., size, size), float32.

    Two taps per output pixel along y, then along x: gathers and multiply-adds, no matrix
    multiply (as two small BLAS products it took 78 ms a recording inside a conversion on a
    busy 2-core machine, BLAS's threads contending, against 0.7 ms with BLAS on one thread).
    """
    H, W = frames.shape[-2:]
    frames = frames.astype(np.float32, copy=False)
    if (H, W) == (size, size):
        return frames
    i0, i1, w = bilinear_taps(H, size)
    w = w[:, None]                                                    # (size, 1): along y
    rows = frames[..., i0, :] * (1 - w) + frames[..., i1, :] * w      # (..., size, W)
    j0, j1, v = bilinear_taps(W, size)
    return rows[..., j0] * (1 - v) + rows[..., j1] * v                # (..., size, size)
