"""Where a training step of the reference net spends its time, layer by layer.

    python benchmarks/profile_layers.py [--batch 64] [--batchnorm] [--repeats 50] [--dtype float32]

Prints a markdown table: for each layer its forward and backward time
(median over ``--repeats`` steps, milliseconds) and its share of the sum.
Layers are timed one by one (the readable layers, ``npcnn.nn``), with BLAS's threads
handled as the fast path handles them (:mod:`npcnn.parallel`). Below the table, the
Conv2d -> ReLU -> MaxPool2d triples as the fast path (:mod:`npcnn.fast`) really
runs them (fused), the loss, Adam, and a whole training step
(forward + loss + backward + Adam, fused) for comparison.
"""
import argparse
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npcnn import NLLLoss, fast, parallel, seed_cnn  # noqa: E402
from npcnn.fast import fused  # noqa: E402
from npcnn.optim import Adam  # noqa: E402


def _median_ms(samples):
    return float(np.median(samples) * 1e3)


def profile(batch=64, batchnorm=False, repeats=50, dtype=np.float32, seed=0):
    """Per-layer forward/backward medians (ms) and the fused/whole-step extras, as dicts."""
    rng = np.random.default_rng(seed)
    model = seed_cnn(batchnorm=batchnorm, dtype=dtype, rng=seed)
    loss_fn = NLLLoss()
    opt = Adam(model.parameters(), lr=1e-3)
    x = rng.random((batch, 1, 28, 28)).astype(dtype)
    t = rng.integers(0, 10, batch)
    layers = list(model)
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
    triples = [i for i in range(len(layers)) if fused.fusable(layers, i)]
    steps = {i: fused.ConvReLUPool(*layers[i:i + 3]) for i in triples}
    net = fast.plan(model)
    fused_f = {i: [] for i in triples}
    fused_b = {i: [] for i in triples}
    extras = {"loss (forward+backward)": [], "Adam step": [], "training step (fused)": []}
    for rep in range(repeats + 3):                 # the first 3 are warm-up (and numba compile)
        keep = rep >= 3
        # layer by layer
        acts = [x]
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            acts.append(layer.forward(acts[-1]))
            if keep:
                fwd[i].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loss_fn.forward(acts[-1], t)
        g = loss_fn.backward()
        if keep:
            extras["loss (forward+backward)"].append(time.perf_counter() - t0)
        model.zero_grad()
        for i in reversed(range(len(layers))):
            t0 = time.perf_counter()
            g = layers[i].backward(g)
            if keep:
                bwd[i].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt.step()
        if keep:
            extras["Adam step"].append(time.perf_counter() - t0)
        # the fused triples, on the activations of this step
        for i in triples:
            t0 = time.perf_counter()
            out = steps[i].forward(acts[i])
            t1 = time.perf_counter()
            steps[i].backward(np.ones_like(out), True, input_grad=i > 0)
            t2 = time.perf_counter()
            if keep:
                fused_f[i].append(t1 - t0)
                fused_b[i].append(t2 - t1)
        # one whole step as training runs it
        t0 = time.perf_counter()
        model.zero_grad()
        loss_fn.forward(net.forward(x), t)
        net.backward(loss_fn.backward(), input_grad=False)     # as npcnn.train does
        opt.step()
        if keep:
            extras["training step (fused)"].append(time.perf_counter() - t0)
    rows = [{"layer": f"{i}: {layer!r}", "forward_ms": _median_ms(fwd[i]), "backward_ms": _median_ms(bwd[i])}
            for i, layer in enumerate(layers)]
    fused_rows = [{"layer": f"{i}-{i + 2}: fused {type(layers[i]).__name__}+ReLU+MaxPool2d",
                   "forward_ms": _median_ms(fused_f[i]), "backward_ms": _median_ms(fused_b[i])} for i in triples]
    return rows, fused_rows, {k: _median_ms(v) for k, v in extras.items()}


def markdown(rows, fused_rows, extras, batch):
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    out = ["| layer | forward ms | backward ms | share |", "|---|---:|---:|---:|"]
    for r in rows:
        share = (r["forward_ms"] + r["backward_ms"]) / total
        out.append(f"| {r['layer']} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | {share:.0%} |")
    out.append(f"| **sum of layers (unfused)** | {sum(r['forward_ms'] for r in rows):.2f} | "
               f"{sum(r['backward_ms'] for r in rows):.2f} | 100% |")
    for r in fused_rows:
        out.append(f"| {r['layer']} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | |")
    for k, v in extras.items():
        out.append(f"| {k} | {v:.2f} | | |")
    step = extras["training step (fused)"]
    out.append(f"\nbatch {batch}: {step:.2f} ms per training step = {batch / step * 1e3:,.0f} images/s "
               f"(medians; numba threading layer {numba.threading_layer()}, {os.cpu_count()} cores)")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batchnorm", action="store_true")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    # as the fast path runs a batch this size: BLAS on one thread, npcnn's threads for the GEMMs (and
    # no BLAS thread left spinning by the layer-by-layer part when the whole step is timed)
    with parallel.one_blas_thread(parallel.own_threads_pay(np.empty((args.batch, 1, 28, 28), np.float32))):
        rows, fused_rows, extras = profile(args.batch, args.batchnorm, args.repeats, np.dtype(args.dtype))
    print(markdown(rows, fused_rows, extras, args.batch))


if __name__ == "__main__":
    main()
