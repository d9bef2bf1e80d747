"""Optimizers (SGD, Adam), the cosine learning-rate schedule and gradient-norm clipping.

An optimizer takes the list that `Module.parameters()` returns,

    [(dotted name, param, grad, decay), ...]

and updates every `param` IN PLACE, so the arrays the layers hold stay the arrays being trained.
Build the optimizer after `model.to(xp, dtype)`: `to` replaces the arrays, in-place updates do not.

The update rules are those of torch.optim.SGD and torch.optim.Adam: weight decay is L2, added to
the gradient (g <- g + wd * p) and only where the entry's decay flag is True (conv and linear
weights, not biases or batchnorm affine parameters). It is not AdamW's decoupled decay.
"""
import math

import numpy as np

from .backend import get_array_module, to_numpy
from .layers.base import StateDictError, check_state_keys


class Optimizer:
    """What SGD and Adam share: the parameter list, `lr`, the step count and state (de)serialising.

    A subclass lists its per-parameter buffers in `buffer_names`; each buffer lives in
    `self.state[buffer][param name]`, an array of the parameter's module (numpy/cupy) and dtype.
    """

    buffer_names = ()

    def __init__(self, params, lr, weight_decay=0.0):
        self.params = list(params)
        names = [name for name, _, _, _ in self.params]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr ({lr}) and weight_decay ({weight_decay}) must be >= 0")
        self.lr = float(lr)  # the schedule sets this before each step
        self.weight_decay = float(weight_decay)
        self.step_count = 0  # steps taken so far
        self.state = {buf: {name: get_array_module(p).zeros_like(p)
                            for name, p, _, _ in self.params}
                      for buf in self.buffer_names}

    def _decayed(self, p, g, decay):
        """g + wd * p where weight decay applies, else g itself; the stored gradient is not changed."""
        if decay and self.weight_decay != 0.0:
            return g + self.weight_decay * p
        return g

    def step(self):
        raise NotImplementedError

    # -- state dict -----------------------------------------------------------------------
    def state_dict(self):
        """Plain NumPy copies: {'step': int64 scalar, '<buffer>/<param name>': array, ...}."""
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        for buf in self.buffer_names:
            for name, arr in self.state[buf].items():
                out[f"{buf}/{name}"] = to_numpy(arr).copy()
        return out

    def load_state_dict(self, state):
        """Copy `state` into the buffers in place; raise StateDictError (a ValueError) naming
        every missing, unexpected or wrong-shaped key before anything is changed."""
        shapes = {"step": ()}
        for buf in self.buffer_names:
            for name, arr in self.state[buf].items():
                shapes[f"{buf}/{name}"] = tuple(arr.shape)
        try:
            check_state_keys(state, shapes, "optimizer")
        except StateDictError as e:
            raise StateDictError(f"{type(self).__name__} state dict: {e}") from None
        for buf in self.buffer_names:
            for name, arr in self.state[buf].items():
                xp = get_array_module(arr)
                arr[...] = xp.asarray(to_numpy(state[f"{buf}/{name}"]), dtype=arr.dtype)
        self.step_count = int(to_numpy(state["step"]))


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum, as torch.optim.SGD (dampening 0).

        d = g + wd * p                      (only where the decay flag is set)
        buf = d                             on the first step
        buf = momentum * buf + d            afterwards
        d = d + momentum * buf   (Nesterov)  or  d = buf   (classical momentum)
        p = p - lr * d

    With momentum=0 there is no buffer and the update is p = p - lr * d.
    """

    def __init__(self, params, lr, momentum=0.9, nesterov=False, weight_decay=0.0):
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.buffer_names = ("momentum",) if momentum != 0 else ()
        super().__init__(params, lr, weight_decay)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def step(self):
        for name, p, g, decay in self.params:
            d = self._decayed(p, g, decay)
            if self.momentum != 0.0:
                buf = self.state["momentum"][name]
                if self.step_count == 0:
                    buf[...] = d  # torch starts the buffer at the first gradient, not at zero
                else:
                    buf *= self.momentum
                    buf += d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= self.lr * d
        self.step_count += 1


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay, as torch.optim.Adam (amsgrad off).

    At step t = 1, 2, ...:
        d = g + wd * p                      (only where the decay flag is set)
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(params, lr, weight_decay)
        self.betas = (float(beta1), float(beta2))
        self.eps = float(eps)

    def step(self):
        beta1, beta2 = self.betas
        t = self.step_count + 1
        step_size = self.lr / (1.0 - beta1 ** t)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** t)
        for name, p, g, decay in self.params:
            xp = get_array_module(p)
            d = self._decayed(p, g, decay)
            m = self.state["exp_avg"][name]
            v = self.state["exp_avg_sq"][name]
            m *= beta1
            m += (1.0 - beta1) * d
            v *= beta2
            v += (1.0 - beta2) * (d * d)
            denom = xp.sqrt(v)
            denom /= bias_correction2_sqrt
            denom += self.eps
            update = m / denom
            update *= step_size
            p -= update
        self.step_count = t


def cosine_lr(base_lr, step, total_steps, warmup_steps=0, min_lr=0.0):
    """Learning rate for 0-based `step` of `total_steps`: linear warmup, then cosine decay.

        step < W:  lr = base_lr * (step + 1) / W
        else:      lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2,
                   t = min(step - W, T),  T = total_steps - W

    Without warmup this is torch's CosineAnnealingLR(T_max=total_steps, eta_min=min_lr) evaluated
    per step: base_lr at step 0, (base_lr + min_lr) / 2 half-way, min_lr at total_steps and after
    (torch would climb back up past T_max; here the rate stays at min_lr).
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                         f"got total_steps={total_steps}, warmup_steps={warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    T = total_steps - warmup_steps
    if T == 0:
        return min_lr
    t = min(step - warmup_steps, T)
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / T)) / 2.0


def lr_schedule(base_lr, epochs, steps_per_epoch, warmup_epochs=0, per="batch"):
    """lr_at(step): the rate of 0-based optimizer `step` in a run of `epochs` epochs, cosine_lr
    over all its steps after a linear warm-up of `warmup_epochs`. per="epoch": the rate moves
    once per epoch, as a scheduler stepped after each epoch (the warm-up is then whole epochs)."""
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(warmup_epochs * steps_per_epoch)

    def lr_at(step):
        if per == "epoch":
            return cosine_lr(base_lr, step // steps_per_epoch, epochs, int(warmup_epochs))
        return cosine_lr(base_lr, step, total_steps, warmup_steps)
    return lr_at


def clip_grad_norm(params, max_norm):
    """Scale every gradient in place so their global L2 norm is at most `max_norm`.

        total = sqrt(sum over all grads of sum(g^2))
        g = g * max_norm / (total + 1e-6)     only when that factor is below 1

    as torch.nn.utils.clip_grad_norm_. Returns `total` (before clipping) as a Python float. A
    non-finite total leaves the gradients as they are; the caller can see it and skip the step.
    """
    grads = [g for _, _, g, _ in params]
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    # Sum on the device in float64 and bring one number back: one host sync, not one per array.
    total_sq = sum(xp.sum(xp.square(g), dtype=xp.float64) for g in grads)
    total = math.sqrt(float(total_sq))
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total

