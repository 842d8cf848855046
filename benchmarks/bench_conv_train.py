"""Each conv of the zoo nets in training, npcnn's fast step against PyTorch's conv, forward and backward.

    python benchmarks/bench_conv_train.py [--batch 64] [--models a,b] [--repeats 20] [--threads N]
                                          [--json out.json]

bench_zoo says how far a whole training step is from PyTorch's; this script says which convs make the
difference. For every Conv2d of a zoo net (nested blocks included, as ``bench_gemm_floor.conv_layers``
finds them), on a random batch of the shape it sees inside the net:

* npcnn: the conv alone (those the fast path fuses with a ReLU and a 2x2 max-pool, ConvReLUPool, are left
  out: ``profile_layers.py`` times them) as the fast path's :class:`~npcnn.fast.conv_act.ConvAct` step runs it
  in training (no activation, the input channels last as the previous fast step hands it over): ``forward(x)``, then
  ``backward(g)`` with the weight gradient and, except for the net's first conv (whose dL/dx the training
  step skips), dL/dx. BLAS is held to one thread and npcnn shares the GEMMs out, as in a training step.
* PyTorch: ``torch.nn.Conv2d`` of the same shape (its own random weights), in NCHW and in channels_last, forward and then
  ``backward(g)`` (the input's ``requires_grad`` as above); the faster layout of each (forward + backward)
  is reported. It runs in a fresh process (numba's and PyTorch's threads would wait on each other in one).

Times are medians over ``--repeats`` after a warm-up, in ms; "x" columns are PyTorch / npcnn (> 1: npcnn
is faster). The convs' sums come last. A conv timed alone is not the same conv inside a net (caches,
page faults: ``bench_gemm_floor`` says more), so the sums are set beside bench_zoo's whole steps, not
in place of them. The conv's path is printed with it: ``direct``, or ``gemm`` (im2col + GEMM) followed by
the parts Winograd computes, as the step's own argument builders decide (:mod:`npcnn.fast.winograd`):
``fwd`` (the forward: in a net without max-pools), ``dW`` (32+ channels) and ``dx``.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, os.path.join(ROOT, "tests"), ROOT):        # bench_gemm_floor, torch_oracle, npcnn
    sys.path.insert(0, _p)

from bench_gemm_floor import _median_ms, conv_layers, write_json  # noqa: E402
from npcnn import parallel  # noqa: E402
from npcnn.fast import conv_act, fused, winograd  # noqa: E402
from npcnn.nn import Residual, Sequential  # noqa: E402


def pooled_convs(seq):
    """ids of the Conv2d layers the fast path fuses with the ReLU and 2x2 max-pool after them (ConvReLUPool)."""
    found = set()
    for i, layer in enumerate(seq.layers):
        if fused.fusable(seq.layers, i):
            found.add(id(layer))
        for inner in ([layer] if isinstance(layer, Sequential) else
                      [layer.body] + ([layer.shortcut] if layer.shortcut is not None else [])
                      if isinstance(layer, Residual) else []):
            found |= pooled_convs(inner)
    return found


def spec(conv, shape, input_grad):
    """What the PyTorch process needs to build and time the same conv."""
    (kh, kw), stride, padding = conv.kernel_size, conv.stride, conv.padding
    return {"shape": list(shape), "out_channels": conv.out_channels, "kernel": [kh, kw], "stride": list(stride),
            "padding": list(padding), "bias": conv.bias is not None, "input_grad": input_grad}


def path_of(step, conv, shape, input_grad, winograd_forward):
    """How the ConvAct ``step`` computes ``conv`` in training: "direct", or "gemm" and the parts Winograd
    takes, as the step's argument builders decide."""
    if conv_act.direct(conv):
        return "direct"
    _, _, ho, wo = conv.output_shape(shape)
    h, w, dtype = shape[2], shape[3], np.float32
    parts = [name for name, args in (
        ("fwd", winograd.kernel_args(step, conv, dtype, 1, 1, ho, wo, winograd_forward)[0]),
        ("dW", winograd.weight_grad_args(step, conv, dtype, 1, 1, ho, wo, True)[1]),
        ("dx", winograd.input_grad_args(step, conv, dtype, 1, 1, h, w, input_grad)[0])) if args.size]
    return "gemm" + (f"; winograd: {', '.join(parts)}" if parts else "")


def npcnn_times(step, shape, input_grad, winograd_forward, repeats, rng):
    """(forward ms, backward ms) of the ConvAct ``step`` in training, on a channels-last batch."""
    n, c, h, w = shape
    x = rng.standard_normal((n, h, w, c)).astype(np.float32).transpose(0, 3, 1, 2)   # channels last
    with parallel.one_blas_thread(parallel.own_threads_pay(x)):
        y = step.forward(x, False, winograd_forward)
        g = rng.standard_normal(y.shape).astype(np.float32)
        g = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)      # as a fast step's dL/dy
        forward = _median_ms(lambda: step.forward(x, False, winograd_forward), repeats)
        backward = _median_ms(lambda: step.backward(g, True, input_grad), repeats)
    return forward, backward


def torch_times(specs, repeats, threads):
    """For each spec: {"layout", "forward", "backward"} of the faster layout (forward + backward)."""
    import torch
    torch.set_num_threads(threads)
    rng, out = np.random.default_rng(0), []
    for s in specs:
        n, c, h, w = s["shape"]
        conv = torch.nn.Conv2d(c, s["out_channels"], tuple(s["kernel"]), stride=tuple(s["stride"]),
                               padding=tuple(s["padding"]), bias=s["bias"])
        x0 = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
        best = None
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            m = conv.to(memory_format=fmt)
            x = x0.contiguous(memory_format=fmt).requires_grad_(s["input_grad"])
            g = torch.randn_like(m(x))

            def forward():
                return m(x)

            def forward_backward():
                m.zero_grad()
                x.grad = None
                m(x).backward(g)
            fwd = _median_ms(forward, repeats)
            bwd = max(_median_ms(forward_backward, repeats) - fwd, 0.0)
            if best is None or fwd + bwd < best["forward"] + best["backward"]:
                best = {"layout": layout, "forward": fwd, "backward": bwd}
        out.append(best)
    return out


def torch_in_subprocess(specs, repeats, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-specs", json.dumps(specs), "--repeats", str(repeats),
           "--threads", str(threads)]
    env = dict(os.environ, NPCNN_TUNE_MALLOC="0")     # PyTorch as it comes, without npcnn's malloc tuning
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model, batch, repeats, threads, seed=0):
    from npcnn.models import INPUT_SHAPES, build_model
    net = build_model(model, rng=0).train()
    rng, rows, specs, pooled = np.random.default_rng(seed), [], [], pooled_convs(net)
    winograd_forward = winograd.forward_may_take_winograd(net)       # as FastSequential decides in training
    for i, (name, conv, _path, shape) in enumerate(conv_layers(net, (batch, *INPUT_SHAPES[model]))):
        if id(conv) in pooled:                # a ConvReLUPool step: benchmarks/profile_layers.py times those
            continue
        input_grad, step = i > 0, conv_act.ConvAct(conv)
        (kh, kw), sh = conv.kernel_size, conv.stride[0]
        path = path_of(step, conv, shape, input_grad, winograd_forward)
        forward, backward = npcnn_times(step, shape, input_grad, winograd_forward, repeats, rng)
        rows.append({"layer": name, "conv": f"{conv.in_channels}->{conv.out_channels} {kh}x{kw}"
                     + (f" s{sh}" if sh > 1 else ""), "input": "x".join(map(str, shape[1:])), "path": path,
                     "input_grad": input_grad, "npcnn": {"forward": forward, "backward": backward}})
        specs.append(spec(conv, shape, input_grad))
    for row, theirs in zip(rows, torch_in_subprocess(specs, repeats, threads)):
        row["torch"] = theirs
    return rows


def report(results):
    lines = []
    for model, rows in results["models"].items():
        if not rows:
            lines.append(f"\n### {model}: every conv is fused with its ReLU and max-pool (profile_layers.py)")
            continue
        config = results["config"]
        lines += [f"\n### {model} (training, batch {config['batch']}, {config['threads']} threads)\n",
                  "| conv | input (CxHxW) | npcnn path | npcnn fwd ms | bwd ms | PyTorch fwd ms | bwd ms | layout "
                  "| fwd x | bwd x |", "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
        for r in rows:
            ours, theirs = r["npcnn"], r["torch"]
            lines.append(f"| {r['layer']} {r['conv']} | {r['input']} | {r['path']} | {ours['forward']:.2f} | "
                         f"{ours['backward']:.2f} | {theirs['forward']:.2f} | {theirs['backward']:.2f} | "
                         f"{theirs['layout']} | {theirs['forward'] / ours['forward']:.2f} | "
                         f"{theirs['backward'] / ours['backward']:.2f} |")
        ours = [sum(r["npcnn"][k] for r in rows) for k in ("forward", "backward")]
        theirs = [sum(r["torch"][k] for r in rows) for k in ("forward", "backward")]
        lines.append(f"\nall convs: npcnn {ours[0]:.2f} + {ours[1]:.2f} ms, PyTorch {theirs[0]:.2f} + {theirs[1]:.2f} "
                     f"ms (PyTorch / npcnn x{sum(theirs) / sum(ours):.2f})")
    return "\n".join(lines)


def main(argv=None):
    from npcnn.models import MODELS, model_name
    ap = argparse.ArgumentParser(description="each zoo conv in training: npcnn's fast step vs PyTorch's conv")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: every zoo model)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median)")
    ap.add_argument("--threads", type=int, default=parallel.num_threads(),
                    help="torch.set_num_threads (default: numba's threads, which npcnn uses)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--torch-specs", help=argparse.SUPPRESS)   # the PyTorch subprocess's job
    args = ap.parse_args(argv)
    if args.torch_specs:
        print(json.dumps(torch_times(json.loads(args.torch_specs), args.repeats, args.threads)))
        return 0
    models = [model_name(m) for m in args.models.split(",")]
    results = {"config": {"batch": args.batch, "repeats": args.repeats, "threads": args.threads,
                          "cpus": os.cpu_count()}, "models": {}}
    for model in models:
        results["models"][model] = measure(model, args.batch, args.repeats, args.threads)
        print(f"{model} done", flush=True)
    print(report(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
