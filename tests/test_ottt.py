"""OTTT: weight gradients from presynaptic traces, against a plain loop reference."""
import numpy as np
import pytest

from minirate.backend import to_numpy
from minirate.data.cifar import load_cifar
from minirate.data.loader import Loader
from minirate.layers.container import Sequential
from minirate.layers.lif import LIF
from minirate.layers.linear import Linear
from minirate.layers.scale import Scale
from minirate.losses import ce_mse
from minirate.methods import make_method
from minirate.models import Net, build_model
from minirate.optim import SGD
from tests.test_per_step_loss import tiny_ws_net
from tests.test_sltt import per_step_random_loss

DECAY, THETA = 0.5, 1.0


def two_layer_net(seed=0, xp=np):
    """Linear - LIF - x2.74 - Linear (the readout fed by scaled spikes), float64 on module xp."""
    rng = np.random.default_rng(seed)
    net = Net([("hidden", Sequential(Linear(6, 5, rng=rng), LIF(decay=DECAY, threshold=THETA),
                                     Scale(2.74))),
               ("classifier", Sequential(Linear(5, 3, rng=rng)))])
    net.to(np, np.float64)
    net.children["hidden"].children["0"].params["weight"] *= 3      # so that it fires
    return net.to(xp)


def reference_ottt(net, x, Gs):
    """OTTT's gradients written out with loops: soft reset, sigmoid surrogate (α = 4), the
    upstream gradient of step t is Gs[t] / T."""
    W1 = net.children["hidden"].children["0"].params["weight"]
    b1 = net.children["hidden"].children["0"].params["bias"]
    W2 = net.children["classifier"].children["0"].params["weight"]
    b2 = net.children["classifier"].children["0"].params["bias"]
    T, (B, n_in), (n_h, _), (n_out, _) = len(Gs), x.shape, W1.shape, W2.shape
    dW1, db1, dW2, db2 = (np.zeros_like(a) for a in (W1, b1, W2, b2))
    u_post, trace = np.zeros((B, n_h)), np.zeros((B, n_h))
    for t in range(T):
        u = np.zeros((B, n_h))
        s = np.zeros((B, n_h))
        for b in range(B):
            for j in range(n_h):
                I = b1[j] + sum(W1[j, i] * x[b, i] for i in range(n_in))
                u[b, j] = DECAY * u_post[b, j] + I
                s[b, j] = 1.0 if u[b, j] >= THETA else 0.0
                u_post[b, j] = u[b, j] - THETA * s[b, j]
                trace[b, j] = DECAY * trace[b, j] + s[b, j]         # â_t = λ â_{t−1} + s_t
        g = Gs[t] / T                                               # dL_t/dout_t
        for b in range(B):
            for k in range(n_out):
                db2[k] += g[b, k]
                for j in range(n_h):
                    dW2[k, j] += g[b, k] * 2.74 * trace[b, j]      # readout: the scaled trace
            for j in range(n_h):
                ds = sum(g[b, k] * W2[k, j] for k in range(n_out)) * 2.74
                sig = 1 / (1 + np.exp(-4.0 * (u[b, j] - THETA)))
                dI = ds * 4.0 * sig * (1 - sig)                     # sigmoid surrogate, α = 4
                db1[j] += dI
                for i in range(n_in):
                    dW1[j, i] += dI * x[b, i]                       # raw input: no trace
    return {"hidden.0.weight": dW1, "hidden.0.bias": db1,
            "classifier.0.weight": dW2, "classifier.0.bias": db2}


def test_weight_gradient_is_gradient_times_trace(xp):
    T = 4
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, size=(3, 6))
    Gs = rng.normal(size=(T, 3, 3))
    net = two_layer_net(1, xp)
    net.zero_grad()
    y = xp.zeros(3, int)
    make_method("ottt", net, T).step(xp.asarray(x), y, per_step_random_loss(Gs))
    ref = reference_ottt(two_layer_net(1), x, Gs)
    grads = {name: to_numpy(g) for name, _, g, _ in net.parameters()}
    assert set(grads) == set(ref)
    for name in ref:
        assert np.abs(ref[name]).max() > 0
        assert np.allclose(grads[name], ref[name], rtol=1e-12, atol=1e-14), name
    # the trace matters: spikes in its place (SLTT) give another readout gradient
    net.zero_grad()
    make_method("sltt", net, T).step(xp.asarray(x), y, per_step_random_loss(Gs))
    sltt_grads = {name: to_numpy(g) for name, _, g, _ in net.parameters()}
    assert not np.allclose(sltt_grads["classifier.0.weight"], ref["classifier.0.weight"])


def test_sws_network_at_T1_equals_per_step_bptt_on_frames():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.5, 1.0, size=(1, 3, 2, 4, 4)), np.array([0, 2, 1])
    grads = []
    for name, kw in (("ottt", {}), ("bptt", dict(step_mode="s", per_step_loss=True))):
        net = tiny_ws_net(2, decay=DECAY)
        net.zero_grad()
        make_method(name, net, 1, **kw).step(x, y, ce_mse(0.05))
        grads.append({n: g.copy() for n, _, g, _ in net.parameters()})
    for k in grads[1]:
        assert np.abs(grads[1][k]).max() > 0, k
        assert np.allclose(grads[0][k], grads[1][k], rtol=1e-12, atol=1e-15), k


def test_per_step_update_calls_back_after_every_step():
    """OTTT_O: after_step() sees exactly step t's gradient; summed, they are OTTT_A's."""
    T = 3
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.5, 1.0, size=(3, 2, 4, 4)), np.array([0, 2, 1])
    net = tiny_ws_net(3, decay=DECAY)
    seen = []

    def after_step():                # what an optimizer step would read, then zero
        seen.append([g.copy() for _, _, g, _ in net.parameters()])
        net.zero_grad()
    net.zero_grad()
    make_method("ottt", net, T, ottt_update="per-step").step(x, y, ce_mse(0.05), after_step)
    assert len(seen) == T
    net_a = tiny_ws_net(3, decay=DECAY)
    net_a.zero_grad()
    make_method("ottt", net_a, T).step(x, y, ce_mse(0.05))
    for i, (_, _, g, _) in enumerate(net_a.parameters()):
        assert np.allclose(sum(step[i] for step in seen), g, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError):
        make_method("ottt", net, T, ottt_update="per-step").step(x, y)
    with pytest.raises(ValueError):
        make_method("ottt", net, T, ottt_update="sometimes")


def test_per_step_update_uses_the_updated_weights():
    """With an SGD step in after_step, step t+1 runs on the weights step t left: step 0's output
    is OTTT_A's, step 1's is not, and the weights end at w − lr Σ_t g_t."""
    T, lr = 2, 0.5
    rng = np.random.default_rng(4)
    x, y = rng.normal(0.5, 1.0, size=(2, 2, 4, 4)), np.array([0, 1])
    outputs, seen = {}, []

    def recording(key):
        def loss_fn(z, y_):
            outputs.setdefault(key, []).append(z.copy())
            return ce_mse(0.05)(z, y_)
        return loss_fn

    net = tiny_ws_net(4, decay=DECAY)
    w0 = [p.copy() for _, p, _, _ in net.parameters()]

    def sgd():
        seen.append([g.copy() for _, _, g, _ in net.parameters()])
        for _, p, g, _ in net.parameters():
            p -= lr * g
        net.zero_grad()
    net.zero_grad()
    make_method("ottt", net, T, ottt_update="per-step").step(x, y, recording("o"), sgd)
    make_method("ottt", tiny_ws_net(4, decay=DECAY), T).step(x, y, recording("a"))
    assert np.array_equal(outputs["o"][0], outputs["a"][0])
    assert not np.allclose(outputs["o"][1], outputs["a"][1])
    for i, (_, p, _, _) in enumerate(net.parameters()):
        assert np.allclose(p, w0[i] - lr * (seen[0][i] + seen[1][i]), rtol=1e-12, atol=1e-15)


def test_ottt_o_learns_on_real_images():
    """Real CIFAR-10 images (the bundled sample), small ResNet, T = 2, SGD after every step."""
    x, y, *_ = load_cifar("cifar10-sample", None)
    loader = Loader(x[:384], y[:384], 32, train=True, seed=0)
    model = build_model("small", 10, 0.5, seed=0)
    method = make_method("ottt", model, 2, ottt_update="per-step")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)

    def update():
        opt.step()
        model.zero_grad()
    losses = []
    for epoch in range(3):
        for xb, yb in loader.iter_epoch(epoch):
            model.zero_grad()
            losses.append(method.step(xb, yb, ce_mse(0.05), update)[0])
    assert opt.step_count == 2 * len(losses)
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < first - 0.1, (first, last)
