"""The GEMM floor of the zoo nets' convs against the whole forward of npcnn and of PyTorch (inference).

    python benchmarks/bench_gemm_floor.py [--batch 1000] [--models a,b] [--repeats 5] [--threads N]
                                          [--json out.json]

npcnn's fast path (:mod:`npcnn.fast`: ``ConvAct``, the eval-mode ``ConvBatchNorm``, the ``"nhwc"`` path of
``ConvReLUPool``) runs a conv as im2col into the columns of ``step`` images, ``step = max(1,
NHWC_CHUNK_BYTES // (P*K*4))`` (P = Ho*Wo, K = kh*kw*C), then one GEMM per chunk,
``rows (step*P, F) = cols (step*P, K) @ W (K, F)``, the chunks shared among the threads, each calling
single-threaded BLAS. For each conv this script times those GEMMs alone (the same shapes, chunks and
thread split, through NumPy's OpenBLAS held to one thread per thread): the **GEMM floor**, the time
npcnn's conv cannot go below while its GEMM runs in OpenBLAS at this shape. im2col, the bias, the
activation, the pooling and the layout copies all come on top of it. Convs npcnn computes without a
GEMM are marked "direct" and count in no floor. Convs npcnn computes by Winograd in inference
(:mod:`npcnn.fast.winograd`: 3x3 or 5x5, stride 1, 16+ channels in and out) are marked "winograd" and keep
their im2col GEMM floor: npcnn's forward can go below the floor there, which is what Winograd is for.

Per model, the sum of the floors is set against two whole forwards at the same batch, in eval mode:
npcnn's fast path and PyTorch's (the twin with the same weights, ``tests/torch_oracle.py``, NCHW and
channels_last, the faster; ``torch.no_grad()``). A floor / PyTorch ratio near or above 1 says that
OpenBLAS's GEMMs alone take as long as PyTorch's whole net: no work on npcnn's own kernels reaches
PyTorch there while the GEMMs go through BLAS. (A conv timed alone in PyTorch is no fair stand-in for
the same conv inside its net: on a 2-core AMD EPYC a 32->32 conv + ReLU on 1000x32x32x32 took 200 ms
alone and 107 ms inside the small VGG, page faults on its 131 MB output included or not; so only
whole forwards are compared.) Times are medians over ``--repeats`` after one warm-up call, in ms.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT):        # torch_oracle, npcnn
    sys.path.insert(0, _p)

from npcnn import parallel  # noqa: E402
from npcnn.fast import conv_act, conv_norm, fused, winograd  # noqa: E402
from npcnn.nn import Conv2d, Residual, Sequential  # noqa: E402
from npcnn.nn.residual import chain_shape  # noqa: E402


def _median_ms(fn, repeats):
    fn()                                               # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def conv_layers(seq, shape, prefix=""):
    """``(name, conv, path, input_shape)`` for each Conv2d of the Sequential ``seq``, nested Sequentials and
    Residual bodies / shortcuts included. ``path`` is how the fast path computes the conv: "gemm" (chunked
    im2col + GEMM), "winograd" (chunked Winograd; its im2col GEMMs measured all the same), "direct" (no
    GEMM) or "whole-batch GEMM" (Conv2d's own, not measured)."""
    layers = seq.layers
    for i, layer in enumerate(layers):
        name = f"{prefix}{i}"
        if isinstance(layer, Sequential):
            yield from conv_layers(layer, shape, name + ".")
        elif isinstance(layer, Residual):
            yield from conv_layers(layer.body, shape, name + ".body.")
            if layer.shortcut is not None:
                yield from conv_layers(layer.shortcut, shape, name + ".shortcut.")
        elif type(layer) is Conv2d:
            if fused.fusable(layers, i):               # Conv -> ReLU -> MaxPool: ConvReLUPool
                path = {"small": "direct", "nhwc": "gemm"}.get(fused._path(layer, layers[i + 2]), "whole-batch GEMM")
            else:                                      # ConvBatchNorm (folded in eval mode) or ConvAct
                path = "direct" if conv_act.direct(layer) else "gemm"
            if path == "gemm" and winograd.fits(layer, np.float32):
                path = "winograd"
            yield name, layer, path, tuple(shape)
        shape = chain_shape(layer, shape)


def gemm_floor(conv, shape, threads, repeats, rng):
    """The chunked GEMMs of ``conv`` on a batch of ``shape`` as npcnn shares them among ``threads``:
    (ms, M, K, F, chunks), M the rows of a full chunk."""
    from threadpoolctl import threadpool_limits
    n, c = shape[:2]
    _, f, ho, wo = conv.output_shape(shape)
    p, k = ho * wo, conv.kernel_size[0] * conv.kernel_size[1] * c
    step = max(1, fused.NHWC_CHUNK_BYTES // (p * k * np.dtype(np.float32).itemsize))
    workers = min(threads, -(-n // step))              # as ConvAct._plan
    bounds = [(t * n // workers, (t + 1) * n // workers) for t in range(workers)]
    w_mat = np.ascontiguousarray(conv.weight.data.transpose(2, 3, 1, 0)).reshape(k, f)
    cols = [rng.random((min(b - a, step) * p, k), dtype=np.float32) for a, b in bounds]   # one buffer per thread
    out = np.zeros((n * p, f), dtype=np.float32)     # touched: page faults are not the GEMM's

    def run(t):
        first, last = bounds[t]
        for a in range(first, last, step):
            b = min(last, a + step)
            np.matmul(cols[t][:(b - a) * p], w_mat, out=out[a * p:b * p])

    def once():
        if workers == 1:
            run(0)
        else:
            parallel.run_threads(run, workers)

    with threadpool_limits(1, user_api="blas"):
        ms = _median_ms(once, repeats)
    chunks = sum(-(-(b - a) // step) for a, b in bounds)
    return ms, min(n, step) * p, k, f, chunks


def write_json(path, results):
    """``results`` as JSON at ``path``, written whole to a temporary file, then renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, path)
    print(f"results written to {path}")


def torch_forward_best(twin, shape, repeats):
    """(ms, layout) of PyTorch's eval forward of ``twin`` on a random batch of ``shape``, the faster layout."""
    import torch
    x = torch.rand(shape)
    best = None
    with torch.no_grad():
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            m, xf = twin.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            ms = _median_ms(lambda: m(xf), repeats)
            if best is None or ms < best[0]:
                best = ms, layout
    return best


def torch_in_subprocess(model, batch, repeats, threads):
    """:func:`torch_forward_best` of ``model``'s twin, in a fresh process: in this one numba's threads
    (started by the floors and npcnn's forward) and PyTorch's OpenMP threads would wait on each other,
    which doubled PyTorch's times on a 2-core machine."""
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-forward", model, "--batch", str(batch),
           "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ, NPCNN_TUNE_MALLOC="0")     # PyTorch as it comes, without npcnn's malloc tuning
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=env)
    ms, layout = json.loads(done.stdout.strip().splitlines()[-1])
    return ms, layout


def measure(model, batch, repeats, threads, seed=0):
    from npcnn import fast
    from npcnn.models import INPUT_SHAPES, build_model
    net = build_model(model, rng=0).eval()
    shape = (batch, *INPUT_SHAPES[model])
    rng, rows = np.random.default_rng(seed), []
    for name, conv, path, in_shape in conv_layers(net, shape):
        (kh, kw), sh, ph = conv.kernel_size, conv.stride[0], conv.padding[0]
        row = {"layer": name, "conv": f"{conv.in_channels}->{conv.out_channels} {kh}x{kw}"
               + (f" s{sh}" if sh > 1 else "") + (f" p{ph}" if ph else ""), "input": "x".join(map(str, in_shape[1:])),
               "path": path}
        if path in ("gemm", "winograd"):
            row["floor_ms"], m, k, f, row["chunks"] = gemm_floor(conv, in_shape, threads, repeats, rng)
            _, _, ho, wo = conv.output_shape(in_shape)
            row["gemm"], row["gmacs"] = [m, k, f], in_shape[0] * ho * wo * k * f / row["floor_ms"] / 1e6
        rows.append(row)
    plan, x = fast.plan(net), rng.random(shape, dtype=np.float32)
    npcnn_ms = _median_ms(lambda: plan.forward(x, inference=True), repeats)
    torch_ms, layout = torch_in_subprocess(model, batch, repeats, threads)
    return {"convs": rows, "floor_ms": sum(r.get("floor_ms", 0.0) for r in rows), "npcnn_ms": npcnn_ms,
            "torch_ms": torch_ms, "torch_layout": layout}


def report(results):
    lines = []
    for model, res in results["models"].items():
        lines += [f"\n### {model} (batch {results['config']['batch']}, {results['config']['threads']} threads)\n",
                  "| conv | input (CxHxW) | GEMM M x K x F | chunks | GEMM floor ms | GMAC/s |",
                  "|---|---|---|---:|---:|---:|"]
        for r in res["convs"]:
            head = f"| {r['layer']} {r['conv']} | {r['input']} | "
            if r["path"] not in ("gemm", "winograd"):
                lines.append(head + f"{r['path']} | - | - | - |")
            else:
                lines.append(head + " x ".join(map(str, r["gemm"])) + f" | {r['chunks']} | {r['floor_ms']:.2f} | "
                             f"{r['gmacs']:.1f} |" + (" npcnn: Winograd |" if r["path"] == "winograd" else ""))
        floor, npcnn_ms, torch_ms = res["floor_ms"], res["npcnn_ms"], res["torch_ms"]
        lines.append(f"\nwhole forward: GEMM floor {floor:.1f} ms, npcnn {npcnn_ms:.1f} ms (floor = "
                     f"{100 * floor / npcnn_ms:.0f} % of it), PyTorch {torch_ms:.1f} ms ({res['torch_layout']}); "
                     f"floor / PyTorch = {floor / torch_ms:.2f}")
    lines.append("\n(floor / PyTorch near or above 1: OpenBLAS's GEMMs alone take as long as PyTorch's whole forward, "
                 "for im2col + GEMM; the convs marked Winograd do fewer multiply-adds than their floor)")
    return "\n".join(lines)


def main(argv=None):
    import torch
    from npcnn.models import MODELS, model_name
    ap = argparse.ArgumentParser(description="the convs' GEMM floor (OpenBLAS) vs whole forwards")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: every zoo model)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    ap.add_argument("--threads", type=int, default=parallel.num_threads(),
                    help="npcnn's threads for the GEMM chunks and torch.set_num_threads (default: numba's)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--torch-forward", metavar="MODEL", help=argparse.SUPPRESS)   # the subprocess's job
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.torch_forward:
        from torch_oracle import to_torch
        from npcnn.models import INPUT_SHAPES, build_model
        model = model_name(args.torch_forward)
        twin = to_torch(build_model(model, rng=0), np.float32).eval()
        print(json.dumps(torch_forward_best(twin, (args.batch, *INPUT_SHAPES[model]), args.repeats)))
        return 0
    models = [model_name(m) for m in args.models.split(",")]
    results = {"config": {"batch": args.batch, "repeats": args.repeats, "threads": args.threads,
                          "chunk_bytes": fused.NHWC_CHUNK_BYTES, "torch": torch.__version__, "cpus": os.cpu_count()},
               "models": {}}
    for model in models:
        results["models"][model] = measure(model, args.batch, args.repeats, args.threads)
        print(f"{model} done", flush=True)
    print(report(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
