"""Where a net has no derivative: the kinks of ReLU and max-pool, found in float64, for tie-aware tests.

A max-pool window whose two largest inputs are (nearly) equal, or a ReLU whose input is (nearly) zero,
is a place where the net's gradient jumps. Which side a library lands on there is decided by the last
bit of rounding (the BLAS kernel, FMA, thread splits), so a comparison against PyTorch that crosses
such a point is a test of rounding, not of the library. These helpers find the kinks of an input with
the PyTorch twin in float64 (the same on every machine up to ~1e-15) and say which input pixels they
can reach, so a test can either assert that its input has none (float64 tests) or compare only the
pixels no near-kink reaches (float32 tests, where rounding is ~1e-6 and near-kinks are unavoidable in
a net with tens of thousands of them)::

    from ties import kink_margin, reached_by_kinks

    assert kink_margin(clf, x) > 1e-9                  # float64: no kink within 1e-9 of being crossed
    stable = ~reached_by_kinks(clf, x, 1e-4)           # float32: pixels whose gradient no near-kink can move
"""
import numpy as np
import torch

from test_features import PixelTorch


def _walk(clf, x):
    """The float64 torch twin of ``clf``, and a generator of (index, layer, that layer's input) over its body."""
    body = PixelTorch(clf).body.double()
    norm = clf.normalization
    h = (torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1, 1, 28, 28) - norm.mean) / norm.std

    def layers():
        nonlocal h
        with torch.no_grad():
            for i, layer in enumerate(body):
                yield i, layer, h
                h = layer(h)

    return body, layers()


def _margins(clf, x):
    """Per kink, in the order of the layers: (index of the layer, margin tensor at that layer's output).

    A ReLU's margin is |its input| per unit (reported at its output); a max-pool's is the gap between the
    largest and second largest value of each window (inf where the window is all zeros after a ReLU: the
    gradient is zero whichever input wins). Only 2x2 stride-2 pools (the report's) are handled.
    """
    body, layers = _walk(clf, x)
    out = []
    for i, layer, h in layers:
        if isinstance(layer, torch.nn.ReLU):
            out.append((i, h.abs()))
        elif isinstance(layer, torch.nn.MaxPool2d):
            assert (layer.kernel_size, layer.stride, layer.padding) in ((2, 2, 0), ((2, 2), (2, 2), (0, 0))), layer
            n, c, hh, ww = h.shape
            win = h[..., :hh // 2 * 2, :ww // 2 * 2].reshape(n, c, hh // 2, 2, ww // 2, 2)
            top = torch.sort(win.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh // 2, ww // 2, 4), -1).values
            gap = top[..., 3] - top[..., 2]
            out.append((i, torch.where(top[..., 3] > 0, gap, torch.full_like(gap, np.inf))))
    return body, out


def kink_pattern(clf, x):
    """Which side of every kink ``x`` is on (ReLU active or not, which input of each pool window wins),
    as one boolean/int vector: where two inputs give the same pattern, the net is one linear map between
    them, so a finite difference across them is exact up to rounding."""
    parts = []
    for _, layer, h in _walk(clf, x)[1]:
        if isinstance(layer, torch.nn.ReLU):
            parts.append((h > 0).reshape(-1).numpy().astype(np.int64))
        elif isinstance(layer, torch.nn.MaxPool2d):
            top, idx = torch.nn.functional.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding,
                                                      return_indices=True)
            parts.append(torch.where(top > 0, idx, -1).reshape(-1).numpy())  # all zeros: no gradient
    return np.concatenate(parts)


def kink_margin(clf, x):
    """The smallest distance of ``x`` (pixel images) to any kink of the net, in float64."""
    _, margins = _margins(clf, x)
    return min(float(m.min()) for _, m in margins)


def _reach_net(body, upto):
    """The first ``upto + 1`` layers of ``body`` with every path made visible: weights 1, no bias, ReLU
    and BatchNorm as identity, max-pool as average pool. The gradient of this net is > 0 exactly on the
    inputs a unit depends on."""
    layers = []
    for layer in list(body)[:upto + 1]:
        if isinstance(layer, torch.nn.Conv2d):
            conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                   layer.padding, bias=False).double()
            conv.weight.data.fill_(1.0)
            layers.append(conv)
        elif isinstance(layer, torch.nn.Linear):
            fc = torch.nn.Linear(layer.in_features, layer.out_features, bias=False).double()
            fc.weight.data.fill_(1.0)
            layers.append(fc)
        elif isinstance(layer, torch.nn.MaxPool2d):
            layers.append(torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, torch.nn.Flatten):
            layers.append(layer)
        # ReLU, BatchNorm: identity for reachability
    return torch.nn.Sequential(*layers)


def reached_by_kinks(clf, x, delta):
    """Boolean mask shaped like ``x``: pixels whose gradient a kink with margin < ``delta`` can change."""
    x = np.asarray(x, dtype=np.float64)
    body, margins = _margins(clf, x)
    reached = torch.zeros(x.reshape(-1, 28, 28).shape, dtype=torch.float64)
    for i, margin in margins:
        near = (margin < delta).double()
        if not near.any():
            continue
        # a pool's kink sits on its output (layer i); a ReLU's on its input, the output of layer i - 1
        net = _reach_net(body, i - 1 if isinstance(body[i], torch.nn.ReLU) else i)
        probe = torch.ones(reached.shape[0], 1, 28, 28, dtype=torch.float64, requires_grad=True)
        (net(probe) * near).sum().backward()
        reached += probe.grad[:, 0]
    return (reached > 0).numpy().reshape(x.shape)
