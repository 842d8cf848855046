"""The reference net in plain NumPy: the baseline npcnn's speed is compared with.

No numba, no buffers, no fusion: im2col is ``sliding_window_view`` + a copy,
every layer a few obvious array expressions, as a learner would first write
them. The gradients are correct (``benchmarks/bench_train.py --check``
compares them with npcnn). Only what the reference net needs: 3x3 convs with
padding 1, 2x2 max-pool, ReLU, linear, log-softmax + NLL, Adam.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv_forward(x, w, b):
    """x (N, C, H, W), w (F, C, 3, 3), padding 1 -> (N, F, H, W); returns (y, cache)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))           # (N, C, H, W, 3, 3), a view
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)   # the copy is the im2col
    y = cols @ w.reshape(w.shape[0], -1).T + b                    # (N*H*W, F)
    return y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), (x.shape, cols, w)


def conv_backward(g, cache):
    (n, c, h, wd), cols, w = cache
    f = w.shape[0]
    g2 = g.transpose(0, 2, 3, 1).reshape(-1, f)                   # (N*H*W, F)
    dw = (g2.T @ cols).reshape(w.shape)
    db = g2.sum(axis=0)
    dcols = (g2 @ w.reshape(f, -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=g.dtype)
    for i in range(3):                                            # col2im: 9 shifted adds
        for j in range(3):
            dxp[:, :, i:i + h, j:j + wd] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1], dw, db


def pool_forward(x):
    """2x2 max-pool, stride 2; the mask marks the first maximum of each window (PyTorch's tie rule)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)
    y = np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
    return y, (x.shape, idx)


def pool_backward(g, cache):
    (n, c, h, w), idx = cache
    win = np.zeros((n, c, h // 2, w // 2, 4), dtype=g.dtype)
    np.put_along_axis(win, idx[..., None], g[..., None], axis=-1)
    return win.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


class NumpyNet:
    """seed_cnn() without BatchNorm, parameters in a dict with npcnn's state_dict keys."""

    KEYS = ("0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias")

    def __init__(self, state):
        self.params = {k: np.array(state[k], copy=True) for k in self.KEYS}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0

    def forward(self, x):
        p, c = self.params, {}
        h, c["c1"] = conv_forward(x, p["0.weight"], p["0.bias"])
        c["r1"] = h > 0
        h, c["p1"] = pool_forward(h * c["r1"])
        h, c["c2"] = conv_forward(h, p["3.weight"], p["3.bias"])
        c["r2"] = h > 0
        h, c["p2"] = pool_forward(h * c["r2"])
        c["flat_shape"] = h.shape
        h = h.reshape(h.shape[0], -1)
        c["f1_in"] = h
        h = h @ p["7.weight"].T + p["7.bias"]
        c["r3"] = h > 0
        h = h * c["r3"]
        c["f2_in"] = h
        z = h @ p["9.weight"].T + p["9.bias"]
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        self.cache = c
        return logp

    def backward(self, glogp, param_grads=True):
        """glogp = dL/dlog-probabilities; returns dL/dx and fills self.grads."""
        p, c, gr = self.params, self.cache, {}
        logp = self._logp
        g = glogp - np.exp(logp) * glogp.sum(axis=1, keepdims=True)
        gr["9.weight"], gr["9.bias"] = g.T @ c["f2_in"], g.sum(0)
        g = (g @ p["9.weight"]) * c["r3"]
        gr["7.weight"], gr["7.bias"] = g.T @ c["f1_in"], g.sum(0)
        g = (g @ p["7.weight"]).reshape(c["flat_shape"])
        g = pool_backward(g, c["p2"]) * c["r2"]
        g, gr["3.weight"], gr["3.bias"] = conv_backward(g, c["c2"])
        g = pool_backward(g, c["p1"]) * c["r1"]
        g, gr["0.weight"], gr["0.bias"] = conv_backward(g, c["c1"])
        self.grads = gr
        return g

    def loss(self, x, t):
        self._logp = logp = self.forward(x)
        n = len(t)
        glogp = np.zeros_like(logp)
        glogp[np.arange(n), t] = -1.0 / n
        return -logp[np.arange(n), t].mean(), glogp

    def adam_step(self, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for k, w in self.params.items():
            g = self.grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mhat = self.m[k] / (1 - b1 ** self.t)
            vhat = self.v[k] / (1 - b2 ** self.t)
            w -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(w.dtype)

    def train_step(self, x, t):
        loss, glogp = self.loss(x, t)
        self.backward(glogp)
        self.adam_step()
        return loss
