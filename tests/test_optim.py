"""SGD, Adam, cosine_lr and clip_grad_norm against hand-written float64 recurrences.

The references below loop over single numbers with `math`, one line per equation of the
PyTorch update rules, so they share nothing with the vectorised code they check. Every
hyperparameter differs from the others, so a swapped or missing term changes the result.
"""
import math

import numpy as np
import pytest

from minirate.layers.base import StateDictError
from minirate.optim import SGD, Adam, clip_grad_norm, cosine_lr

STEPS = 5


def make_params(rng, dtype=np.float64):
    """Two entries as Module.parameters() gives them: a decayed weight and an undecayed bias."""
    W = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    return [("fc.weight", W, np.zeros_like(W), True), ("fc.bias", b, np.zeros_like(b), False)]


def grad_sequence(rng, params, steps=STEPS):
    return [[rng.standard_normal(p.shape) for _, p, _, _ in params] for _ in range(steps)]


def run(opt, params, grads):
    for step_grads in grads:
        for (_, _, g, _), gt in zip(params, step_grads):
            g[...] = gt  # in place: the optimizer holds these very arrays
        opt.step()


# -- references (plain float64 loops) ------------------------------------------------------
def sgd_reference(p0, grads, lr, momentum, nesterov, wd):
    p = [float(x) for x in p0.ravel()]
    buf = [None] * len(p)
    for g_step in grads:
        g_flat = g_step.ravel()
        for i in range(len(p)):
            d = float(g_flat[i]) + wd * p[i]
            if momentum != 0.0:
                buf[i] = d if buf[i] is None else momentum * buf[i] + d
                d = d + momentum * buf[i] if nesterov else buf[i]
            p[i] = p[i] - lr * d
    return np.array(p).reshape(p0.shape)


def adam_reference(p0, grads, lr, beta1, beta2, eps, wd):
    p = [float(x) for x in p0.ravel()]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g_step in enumerate(grads, start=1):
        g_flat = g_step.ravel()
        for i in range(len(p)):
            d = float(g_flat[i]) + wd * p[i]
            m[i] = beta1 * m[i] + (1.0 - beta1) * d
            v[i] = beta2 * v[i] + (1.0 - beta2) * d * d
            m_hat = m[i] / (1.0 - beta1 ** t)
            v_hat = v[i] / (1.0 - beta2 ** t)
            p[i] = p[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p).reshape(p0.shape)


# -- SGD ----------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum,nesterov,wd", [
    (0.0, False, 0.0),     # plain
    (0.0, False, 0.03),    # plain with weight decay
    (0.7, False, 0.0),     # momentum
    (0.7, False, 0.03),
    (0.7, True, 0.0),      # Nesterov
    (0.7, True, 0.03),
])
def test_sgd_matches_reference(momentum, nesterov, wd):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    p0 = [p.copy() for _, p, _, _ in params]
    ids = [id(p) for _, p, _, _ in params]
    grads = grad_sequence(rng, params)
    lr = 0.13
    opt = SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    run(opt, params, grads)
    for k, (name, p, _, decay) in enumerate(params):
        want = sgd_reference(p0[k], [gs[k] for gs in grads], lr, momentum, nesterov,
                             wd if decay else 0.0)
        np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-12, err_msg=name)
        assert id(p) == ids[k]  # updated in place
    # weight decay is applied to the bias only if the flag said so: the bias must differ from a
    # run that decays it (when wd > 0), i.e. the flag is honoured per entry
    if wd:
        decayed_bias = sgd_reference(p0[1], [gs[1] for gs in grads], lr, momentum, nesterov, wd)
        assert not np.allclose(params[1][1], decayed_bias)


def test_sgd_leaves_gradients_alone():
    rng = np.random.default_rng(1)
    params = make_params(rng)
    for _, _, g, _ in params:
        g[...] = rng.standard_normal(g.shape)
    before = [g.copy() for _, _, g, _ in params]
    SGD(params, lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.1).step()
    for (_, _, g, _), g0 in zip(params, before):
        np.testing.assert_array_equal(g, g0)


def test_sgd_float32_state_follows_param():
    rng = np.random.default_rng(2)
    params = make_params(rng, np.float32)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run(opt, params, grad_sequence(rng, params, 2))
    assert all(p.dtype == np.float32 for _, p, _, _ in params)
    assert all(b.dtype == np.float32 for b in opt.state["momentum"].values())


# -- Adam ---------------------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.02])
def test_adam_matches_reference(wd):
    rng = np.random.default_rng(3)
    params = make_params(rng)
    p0 = [p.copy() for _, p, _, _ in params]
    grads = grad_sequence(rng, params)
    # eps large enough to matter, betas far apart so swapping them fails
    lr, beta1, beta2, eps = 0.07, 0.8, 0.95, 1e-2
    opt = Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    run(opt, params, grads)
    for k, (name, p, _, decay) in enumerate(params):
        want = adam_reference(p0[k], [gs[k] for gs in grads], lr, beta1, beta2, eps,
                              wd if decay else 0.0)
        np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-12, err_msg=name)
    assert opt.step_count == STEPS


def test_adam_float32():
    rng = np.random.default_rng(4)
    params = make_params(rng, np.float32)
    p0 = [p.astype(np.float64) for _, p, _, _ in params]
    grads = grad_sequence(rng, params, 3)
    run(Adam(params, lr=0.01, weight_decay=0.1), params, grads)
    for k, (_, p, _, decay) in enumerate(params):
        assert p.dtype == np.float32
        want = adam_reference(p0[k], [gs[k].astype(np.float32) for gs in grads], 0.01, 0.9,
                              0.999, 1e-8, 0.1 if decay else 0.0)
        np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)


# -- state dict ---------------------------------------------------------------------------
@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    lambda ps: Adam(ps, lr=0.01, betas=(0.85, 0.99), weight_decay=0.01),
], ids=["sgd", "adam"])
def test_state_dict_round_trip_is_bitwise(make_opt):
    rng = np.random.default_rng(5)
    params = make_params(rng, np.float32)
    grads = grad_sequence(rng, params, 6)
    opt = make_opt(params)
    run(opt, params, grads[:3])

    state = opt.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    assert int(state["step"]) == 3
    snapshot = [p.copy() for _, p, _, _ in params]
    run(opt, params, grads[3:])                      # the uninterrupted run

    params2 = [(n, s.copy(), np.zeros_like(s), d) for (n, _, _, d), s in zip(params, snapshot)]
    opt2 = make_opt(params2)
    opt2.load_state_dict(state)
    run(opt2, params2, grads[3:])                    # the resumed run
    for (_, p, _, _), (_, p2, _, _) in zip(params, params2):
        np.testing.assert_array_equal(p, p2)
    assert opt2.step_count == opt.step_count


def test_state_dict_keys_and_copies():
    rng = np.random.default_rng(6)
    params = make_params(rng)
    adam = Adam(params, lr=0.1)
    assert set(adam.state_dict()) == {"step", "exp_avg/fc.weight", "exp_avg/fc.bias",
                                      "exp_avg_sq/fc.weight", "exp_avg_sq/fc.bias"}
    sgd = SGD(params, lr=0.1, momentum=0.9)
    assert set(sgd.state_dict()) == {"step", "momentum/fc.weight", "momentum/fc.bias"}
    assert set(SGD(params, lr=0.1, momentum=0.0).state_dict()) == {"step"}
    state = sgd.state_dict()
    state["momentum/fc.weight"][...] = 7.0           # a copy, not the live buffer
    assert not np.any(sgd.state["momentum"]["fc.weight"] == 7.0)


def test_load_state_dict_errors_name_the_key():
    rng = np.random.default_rng(7)
    params = make_params(rng)
    opt = Adam(params, lr=0.1)
    good = opt.state_dict()

    missing = dict(good)
    del missing["exp_avg_sq/fc.bias"]
    with pytest.raises(ValueError, match="missing keys: exp_avg_sq/fc.bias"):
        opt.load_state_dict(missing)

    wrong = dict(good)
    wrong["exp_avg/fc.weight"] = np.ones((4, 3))
    with pytest.raises(StateDictError, match=r"exp_avg/fc.weight \(4, 3\) vs \(3, 4\)"):
        opt.load_state_dict(wrong)

    extra = dict(good, **{"momentum/fc.weight": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="unexpected keys: momentum/fc.weight"):
        opt.load_state_dict(extra)

    # a failed load changes nothing
    poisoned = dict(good, **{"exp_avg/fc.bias": np.full(4, 9.0), "step": np.zeros(2)})
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(poisoned)
    assert opt.step_count == 0 and not np.any(opt.state["exp_avg"]["fc.bias"])


# -- schedule -----------------------------------------------------------------------------
def test_cosine_endpoints_and_midpoint():
    base, lo, total = 0.4, 0.01, 100
    assert cosine_lr(base, 0, total, min_lr=lo) == pytest.approx(base)
    assert cosine_lr(base, 50, total, min_lr=lo) == pytest.approx((base + lo) / 2)
    assert cosine_lr(base, 25, total, min_lr=lo) == pytest.approx(
        lo + (base - lo) * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_lr(base, total, total, min_lr=lo) == pytest.approx(lo)
    assert cosine_lr(base, total + 7, total, min_lr=lo) == pytest.approx(lo)  # stays down
    lrs = [cosine_lr(base, s, total) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)


def test_cosine_warmup():
    base, total, warm = 0.2, 110, 10
    assert cosine_lr(base, 0, total, warmup_steps=warm) == pytest.approx(base / warm)
    assert cosine_lr(base, 4, total, warmup_steps=warm) == pytest.approx(base * 5 / warm)
    assert cosine_lr(base, warm - 1, total, warmup_steps=warm) == pytest.approx(base)
    assert cosine_lr(base, warm, total, warmup_steps=warm) == pytest.approx(base)
    assert cosine_lr(base, warm + 50, total, warmup_steps=warm) == pytest.approx(base / 2)
    assert cosine_lr(base, total, total, warmup_steps=warm) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError):
        cosine_lr(base, 0, 10, warmup_steps=11)


def test_optimizer_lr_is_settable():
    rng = np.random.default_rng(8)
    params = make_params(rng)
    p_before = params[1][1].copy()
    params[1][2][...] = 1.0
    opt = SGD(params, lr=1.0, momentum=0.0)
    opt.lr = cosine_lr(0.5, 0, 10)
    opt.step()
    np.testing.assert_allclose(params[1][1], p_before - 0.5)


# -- clipping -----------------------------------------------------------------------------
def test_clip_grad_norm_scales_when_above():
    W = np.zeros((2, 2))
    b = np.zeros(1)
    params = [("w", W, np.array([[3.0, 0.0], [0.0, 0.0]]), True), ("b", b, np.array([4.0]), False)]
    grads = [g for _, _, g, _ in params]
    total = clip_grad_norm(params, max_norm=1.0)
    assert isinstance(total, float) and total == pytest.approx(5.0)
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(grads[0], [[3.0 * coef, 0.0], [0.0, 0.0]], rtol=1e-14)
    np.testing.assert_allclose(grads[1], [4.0 * coef], rtol=1e-14)
    assert grads[0] is params[0][2]  # in place
    assert math.sqrt(sum(float(np.sum(g * g)) for g in grads)) == pytest.approx(1.0, abs=1e-6)


def test_clip_grad_norm_leaves_small_gradients():
    rng = np.random.default_rng(9)
    params = make_params(rng, np.float32)
    for _, _, g, _ in params:
        g[...] = rng.standard_normal(g.shape) * 0.01
    before = [g.copy() for _, _, g, _ in params]
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in before))
    total = clip_grad_norm(params, max_norm=10.0)
    assert total == pytest.approx(want, rel=1e-6)  # squares are float32
    for (_, _, g, _), g0 in zip(params, before):
        np.testing.assert_array_equal(g, g0)
        assert g.dtype == np.float32
