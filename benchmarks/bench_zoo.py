"""Every zoo model against its peers: training and inference speed, npcnn vs PyTorch, JAX and ONNX Runtime.

    python benchmarks/bench_zoo.py [--rounds 3] [--quick] [--models a,b] [--json out.json]
                                   [--peers npcnn,torch,...] [--tasks train,infer] [--envs default,malloc]

For each net of ``npcnn.models.MODELS`` (``build_model(name, rng=0)``, float32, seeded random images,
labels 0..9): **train**, images/s of training steps at batch 64 (forward + NLL loss + backward + Adam
lr 1e-3, npcnn through ``fast.plan`` as bench_train.NpcnnPeer), and **infer**, images/s of eval-mode
forward passes at batch 1000. Peers: ``torch`` / ``torch_cl`` (PyTorch eager, NCHW / channels_last, the
twin of ``tests/torch_oracle.py``), ``jax`` (a generic jitted JAX interpreter of the npcnn Sequential,
NHWC; its train step uses BatchNorm's batch statistics but does not update the running ones) and
``onnxrt`` (infer only: the twin exported by ``torch.onnx.export``, run by onnxruntime).

Each peer is first checked against npcnn on every model (eval log-probabilities of 16 images and the
train-mode loss of one step, same weights, relative error < 2e-4; else MISMATCH, still measured); one
that cannot be imported or exported is reported missing and skipped. Each peer runs in a process of its own
under the default environment (each library as it comes: npcnn with the malloc tuning it does at import,
``npcnn.allocator``; the other peers' workers with it turned off, ``NPCNN_TUNE_MALLOC=0``) and under
bench_train's tuned glibc malloc. Each round of a model, task and environment starts a fresh process per
peer, all at once, and once every one is built and warm gives each peer :data:`WINDOWS` windows of
:data:`WINDOW_SECONDS` in turn (the order rotated from turn to turn, a pause before each window); a
peer's figure for the round is the median of its windows. Two kinds of noise on the 2-core cloud VM of
the README shape this. In time: the speed of every peer drops by 1.5-1.9x for seconds at a time (npcnn's
Wong et al. training step 2.2 -> 3.8 ms, PyTorch's 2.8 -> 4.3, while a 2-thread GEMM in L2 runs
unchanged: memory traffic slows, as when a neighbour fills the shared cache), so a round's windows lie
seconds apart and the peers take turns. From process to process: PyTorch NCHW's Wong et al. inference
ran at 45,000, 80,000 or 109,000 images/s depending on the process and steadily within it, so every
round draws new processes. Per environment and task a table has a row per model: median images/s over
rounds, with "(npcnn xR)", R the median same-round ratio npcnn / peer (> 1: npcnn is faster), and the
median over rounds of npcnn / max(torch, torch_cl) (for infer also npcnn / JAX and / ONNX Runtime).
``--quick``: one round of one window of a few steps, default environment only, asserting nothing about
speed. ``--json PATH`` writes every number (each round's windows and each worker's peak RSS included,
the medians and the checks).
"""
import argparse
import functools
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "tests"), ROOT, HERE):        # torch_oracle, npcnn, bench_train
    sys.path.insert(0, _p)

import bench_train  # noqa: E402
from bench_train import MALLOC_ENV, peak_rss_mb, peer_env  # noqa: E402

PEERS = ["npcnn", "torch", "torch_cl", "jax", "onnxrt"]
TASKS = ["train", "infer"]
INFER_ONLY = {"onnxrt"}
NEEDS = {"torch": ["torch"], "torch_cl": ["torch"], "jax": ["jax"], "onnxrt": ["torch", "onnxruntime"]}
TRAIN_BATCH, INFER_BATCH = 64, 1000
#: Each round measures each peer in WINDOWS windows of WINDOW_SECONDS, each after a pause of PAUSE_SECONDS.
WINDOWS, WINDOW_SECONDS, PAUSE_SECONDS = 2, 1.0, 0.25
RATIOS = {"train": [("pytorch", "npcnn / fastest PyTorch")],
          "infer": [("pytorch", "npcnn / fastest PyTorch"), ("jax", "npcnn / JAX"),
                    ("onnxrt", "npcnn / ONNX Runtime")]}


def _data(model, n, seed=0):
    from npcnn.models import INPUT_SHAPES
    rng = np.random.default_rng(seed)
    return rng.random((n, *INPUT_SHAPES[model]), dtype=np.float32), rng.integers(0, 10, n)


def _build(model, torch_twin=False):
    """The zoo net (seed 0), or its PyTorch twin with the same weights."""
    from npcnn.models import build_model
    net = build_model(model, rng=0)
    if torch_twin:
        from torch_oracle import to_torch
        return to_torch(net, np.float32)
    return net


# =========================================================================== the peers
# Each has infer(x) (eval mode; np.asarray of its result gives the log-probabilities) and, but for
# onnxrt, train_step(x, t) -> the loss of that step, computed before the update. npcnn, torch and jax
# are bench_train's peers (their steps run unchanged) built on a zoo net instead of the reference net.
class NpcnnPeer(bench_train.NpcnnPeer):
    def __init__(self, model):
        from npcnn import NLLLoss, fast
        from npcnn.optim import Adam
        self.model = _build(model)
        self.net = fast.plan(self.model)            # the fast path, as training and the Classifier run it
        self.loss, self.opt = NLLLoss(), Adam(self.model.parameters(), lr=1e-3)


class TorchPeer(bench_train.TorchPeer):
    def __init__(self, model, channels_last=False):
        import torch
        torch.set_num_threads(os.cpu_count())
        self.torch = torch
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = _build(model, torch_twin=True).to(memory_format=self.fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)


def jax_forward(model):
    """An npcnn Sequential in JAX: ``(params, forward(params, x_nhwc, train))``, ``params`` keyed by npcnn's
    parameter names (conv kernels HWIO, dense kernels (in, out)). BatchNorm normalises with the batch
    statistics when ``train``, else with its running statistics (constants, never updated)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    import npcnn.nn as nn
    params = {}
    elementwise = {nn.ReLU: jax.nn.relu, nn.Tanh: jnp.tanh, nn.Sigmoid: jax.nn.sigmoid}

    def window(x, init, op, layer):                  # a pooling window over NHWC
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        return lax.reduce_window(x, init, op, (1, kh, kw, 1), (1, sh, sw, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))

    def with_bias(layer, k, f):                      # f plus the layer's bias, if it has one
        if getattr(layer, "bias", None) is None:
            return f
        params[k + "bias"] = jnp.asarray(layer.bias.data)
        return lambda p, x, train: f(p, x, train) + p[k + "bias"]

    def build(layer, key):
        k = key + "." if key else ""
        if isinstance(layer, nn.Sequential):
            steps = [build(child, k + name) for name, child in layer.children()]
            return lambda p, x, train: functools.reduce(lambda h, step: step(p, h, train), steps, x)
        if isinstance(layer, nn.Residual):
            body = build(layer.body, k + "body")
            short = (lambda p, x, train: x) if layer.shortcut is None else build(layer.shortcut, k + "shortcut")
            return lambda p, x, train: body(p, x, train) + short(p, x, train)
        if isinstance(layer, nn.Conv2d):
            params[k + "weight"] = jnp.asarray(layer.weight.data.transpose(2, 3, 1, 0))     # OIHW -> HWIO
            pad = [(q, q) for q in layer.padding]
            return with_bias(layer, k, lambda p, x, train: lax.conv_general_dilated(
                x, p[k + "weight"], layer.stride, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")))
        if isinstance(layer, nn.Linear):
            params[k + "weight"] = jnp.asarray(layer.weight.data.T)
            return with_bias(layer, k, lambda p, x, train: x @ p[k + "weight"])
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            running = jnp.asarray(layer.running_mean), jnp.asarray(layer.running_var)
            if layer.affine:
                params[k + "weight"] = jnp.asarray(layer.weight.data)

            def batchnorm(p, x, train):
                axes = tuple(range(x.ndim - 1))      # every axis but the channels (last in NHWC)
                mean, var = (x.mean(axis=axes), x.var(axis=axes)) if train else running
                y = (x - mean) * lax.rsqrt(var + layer.eps)
                return y * p[k + "weight"] if layer.affine else y
            return with_bias(layer, k, batchnorm)      # beta, when affine
        if isinstance(layer, nn.MaxPool2d):
            return lambda p, x, train: window(x, -jnp.inf, lax.max, layer)
        if isinstance(layer, nn.AvgPool2d):
            size = layer.kernel_size[0] * layer.kernel_size[1]
            return lambda p, x, train: window(x, 0.0, lax.add, layer) / (
                size if layer.count_include_pad else window(jnp.ones_like(x[:1, :, :, :1]), 0.0, lax.add, layer))
        if isinstance(layer, nn.AdaptiveAvgPool2d) and layer._pair == (1, 1):
            return lambda p, x, train: x.mean(axis=(1, 2), keepdims=True)
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) == (1, -1):
            # npcnn flattens NCHW: back to NCHW first, so the Linear that follows keeps its rows
            return lambda p, x, train: (x.transpose(0, 3, 1, 2) if x.ndim == 4 else x).reshape(x.shape[0], -1)
        if isinstance(layer, nn.LogSoftmax):         # on the logits (N, classes)
            return lambda p, x, train: jax.nn.log_softmax(x, axis=layer.dim)
        if isinstance(layer, nn.LeakyReLU):
            return lambda p, x, train: jax.nn.leaky_relu(x, layer.negative_slope)
        if type(layer) in elementwise:
            return lambda p, x, train: elementwise[type(layer)](x)
        raise TypeError(f"jax_forward: no JAX rendering of {layer!r}")

    return params, build(model, "")


class JaxPeer(bench_train.JaxPeer):          # inherits its _x, train_step and infer
    def __init__(self, model):
        import jax
        import jax.numpy as jnp
        self.jnp, tree_map = jnp, jax.tree_util.tree_map
        self.params, forward = jax_forward(_build(model))

        def loss_fn(p, x, t):
            return -jnp.take_along_axis(forward(p, x, True), t[:, None], axis=1).mean()

        @jax.jit
        def train_step(p, m, v, step, x, t):            # value_and_grad + Adam, as bench_train.JaxPeer
            loss, g = jax.value_and_grad(loss_fn)(p, x, t)
            b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
            m = tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
            p = tree_map(lambda p_, m_, v_: p_ - lr / bc1 * m_ / (jnp.sqrt(v_ / bc2) + eps), p, m, v)
            return p, m, v, loss

        self._train_step, self.forward = train_step, jax.jit(lambda p, x: forward(p, x, False))
        self.m, self.v = tree_map(jnp.zeros_like, self.params), tree_map(jnp.zeros_like, self.params)
        self.step = 0


def export_onnx(twin, shape, path):
    """The eval-mode twin to ONNX, batch axis dynamic: the TorchScript exporter, else the dynamo one."""
    import torch
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # the TorchScript exporter's deprecation notice
                torch.onnx.export(twin, (torch.zeros((2, *shape)),), path, dynamo=dynamo, input_names=["x"],
                                  output_names=["logp"], dynamic_axes={"x": {0: "n"}, "logp": {0: "n"}})
            return
        except Exception as e:                           # noqa: BLE001 - keep the reason, try the other
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


class OnnxPeer:
    def __init__(self, model):
        import onnxruntime as ort
        from npcnn.models import INPUT_SHAPES
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            export_onnx(_build(model, torch_twin=True).eval(), INPUT_SHAPES[model], path)
            self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def infer(self, x):
        return self.sess.run(None, {"x": x})[0]


MAKE_PEER = {"npcnn": NpcnnPeer, "torch": TorchPeer, "torch_cl": lambda m: TorchPeer(m, channels_last=True),
             "jax": JaxPeer, "onnxrt": OnnxPeer}


# =========================================================================== one measurement (in a subprocess)
def _rate(fn, batch, min_steps, seconds):
    """Images/s of ``fn``: at least ``min_steps`` calls and ``seconds`` of them."""
    steps, t0 = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        fn()
        steps += 1
    return batch * steps / (time.perf_counter() - t0)


def serve(model, peer_name, task, quick):
    """A warm worker: builds the peer, takes its warm-up steps, says ``{"ready": true}``, then measures a window
    of ``seconds`` for each number read from stdin (``{"images_per_s": ...}``) until ``quit`` (``{"peak_rss_mb":
    ...}``). Each answer is one JSON line on stdout."""
    peer = MAKE_PEER[peer_name](model)
    batch = TRAIN_BATCH if task == "train" else INFER_BATCH
    x, t = _data(model, batch)
    step = (lambda: peer.train_step(x, t)) if task == "train" else (lambda: peer.infer(x))
    for _ in range(2 if quick else 4):
        step()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        ips = _rate(step, batch, min_steps=3 if quick else 5, seconds=float(line))
        print(json.dumps({"images_per_s": ips}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def check_peers(models, peers, tol=2e-4):
    """Same weights -> same eval log-probabilities and train-mode loss of one step, per model. Returns
    {model: {peer: "ok" | "MISMATCH (...)" | "missing (...)" | "ERROR (...)"}} and the relative errors."""
    status, errors = {}, {}
    for model in models:
        x, t = _data(model, 16, seed=7)
        ref = NpcnnPeer(model)
        logp_ref = np.array(ref.infer(x), dtype=np.float64)
        loss_ref = ref.train_step(x, t)
        status[model], errors[model] = {}, {}
        for name in [p for p in peers if p != "npcnn"]:
            built = False
            try:
                peer, built = MAKE_PEER[name](model), True
                err = float(np.abs(np.asarray(peer.infer(x), np.float64) - logp_ref).max() / np.abs(logp_ref).max())
                if name not in INFER_ONLY:
                    err = max(err, abs(peer.train_step(x, t) - loss_ref) / abs(loss_ref))
            except Exception as e:                       # noqa: BLE001 - not importable or exportable: report
                status[model][name] = f"{'ERROR' if built else 'missing'} ({type(e).__name__}: {e})"
                continue
            errors[model][name] = err
            status[model][name] = "ok" if err < tol else f"MISMATCH (relative error {err:.2e})"
    return status, errors


# =========================================================================== the orchestrator
class Worker:
    """One peer's :func:`serve` process (its own environment, ``peer_env``), started at once: :meth:`ready` waits
    until it is built and warm, :meth:`window` measures, :meth:`close` ends it and gives its peak RSS. A worker
    that fails answers ``{"error": its last line}`` from then on."""

    def __init__(self, model, peer, task, env_name, quick):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", model, peer, task] + (["--quick"] if quick else [])
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, env=peer_env(peer, env_name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, cwd=ROOT)
        self.error = None

    def _answer(self):
        while self.error is None:               # the next JSON line (a library may print lines of its own)
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                return json.loads(line)
        if self.error is None:
            self.proc.wait()
            self.err.seek(0)
            lines = self.err.read().strip().splitlines()
            self.error = lines[-1] if lines else f"worker exited with {self.proc.returncode}"
        return {"error": self.error}

    def _ask(self, text):
        if self.error is None:
            try:
                self.proc.stdin.write(text + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        return self._answer()

    def ready(self):
        return self._answer()                           # {"ready": true} once built and warm

    def window(self, seconds):
        return self._ask(str(seconds))

    def close(self):
        answer = self._ask("quit")
        self.proc.wait()
        self.err.close()
        return answer


def measure_round(model, peers, task, env_name, quick, windows=WINDOWS, seconds=WINDOW_SECONDS, pause=PAUSE_SECONDS):
    """``{peer: dict}`` for one round of one model, task and environment: a fresh worker per peer (all started
    at once, all warm before the first window), then ``windows`` windows each, the peers in turn (the order
    rotated from one turn to the next), a ``pause`` before each window so that the previous peer's threads
    stop spinning. Each dict has the median of the peer's windows as ``images_per_s``, the windows, and the
    worker's peak RSS (or ``error``)."""
    if quick:                                   # one window of a few steps
        windows, seconds, pause = 1, 0, 0
    workers = {peer: Worker(model, peer, task, env_name, quick) for peer in peers}
    for worker in workers.values():
        worker.ready()
    rates = {peer: [] for peer in peers}
    for turn in range(windows):
        for peer in peers[turn % len(peers):] + peers[:turn % len(peers)]:
            time.sleep(pause)
            rates[peer].append(workers[peer].window(seconds))
    out = {}
    for peer, worker in workers.items():
        end = worker.close()
        errors = [r["error"] for r in rates[peer] if "error" in r]
        if errors:
            out[peer] = {"error": errors[0]}
        else:
            ips = [r["images_per_s"] for r in rates[peer]]
            out[peer] = {"images_per_s": float(np.median(ips)), "windows": ips, "peak_rss_mb": end.get("peak_rss_mb")}
    return out


def summarize(raw):
    """summary[env][task][model] = {"peers": {peer: {images_per_s, npcnn_ratio}}, "npcnn_over":
    {peer or "pytorch": ratio}}: medians over rounds, and medians of the same-round ratios npcnn / peer
    ("pytorch": npcnn / the faster of torch and torch_cl in that round)."""
    summary = {}
    for env, by_task in raw.items():
        for task, by_model in by_task.items():
            for model, by_peer in by_model.items():
                rate = {p: [r.get("images_per_s") for r in runs] for p, runs in by_peer.items()}
                ref = rate.get("npcnn", [])
                torches = [rate[p] for p in ("torch", "torch_cl") if p in rate]
                rate["pytorch"] = [max((v for v in vs if v), default=None) for vs in zip(*torches)]
                row = summary.setdefault(env, {}).setdefault(task, {})[model] = {"peers": {}, "npcnn_over": {}}
                for peer, vals in rate.items():
                    ratios = [a / b for a, b in zip(ref, vals) if a and b]
                    if peer != "npcnn" and ratios:
                        row["npcnn_over"][peer] = float(np.median(ratios))
                    if peer == "pytorch" or not any(vals):
                        continue
                    cell = row["peers"][peer] = {"images_per_s": float(np.median([v for v in vals if v]))}
                    if peer in row["npcnn_over"]:
                        cell["npcnn_ratio"] = row["npcnn_over"][peer]
    return summary


def report(results):
    lines = [f"note: {n}" for n in results["notes"]]
    for env, by_task in results["summary"].items():
        lines.append(f"\n## environment: {env}" + (" (glibc malloc tuned)" if env == "malloc" else ""))
        for task, by_model in by_task.items():
            peers = [p for p in PEERS if any(p in row["peers"] for row in by_model.values())]
            cols = RATIOS[task]
            lines.append(f"\n### {task}: images/s, batch {TRAIN_BATCH if task == 'train' else INFER_BATCH}\n")
            lines.append("| model | " + " | ".join(peers + [c for _, c in cols]) + " |")
            lines.append("|---|" + "---:|" * (len(peers) + len(cols)))
            for model, row in by_model.items():
                cells = []
                for p in peers:
                    c = row["peers"].get(p)
                    cells.append("-" if c is None else f"{c['images_per_s']:,.0f}"
                                 + (f" (npcnn x{c['npcnn_ratio']:.2f})" if "npcnn_ratio" in c else ""))
                cells += [f"x{row['npcnn_over'][k]:.2f}" if k in row["npcnn_over"] else "-" for k, _ in cols]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("\n(x = median over rounds of npcnn / peer in the same round; > 1 means npcnn is faster)")
    return "\n".join(lines)


def main(argv=None):
    from npcnn.models import MODELS, model_name
    ap = argparse.ArgumentParser(description="every zoo model: npcnn vs PyTorch, JAX and ONNX Runtime")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a few steps, one round, default env only (CI)")
    ap.add_argument("--json", metavar="PATH")
    for flag, default in (("--envs", "default,malloc"), ("--models", ",".join(MODELS)), ("--peers", ",".join(PEERS)),
                          ("--tasks", ",".join(TASKS))):
        ap.add_argument(flag, default=default, help=f"comma-separated (default {default})")
    ap.add_argument("--serve", nargs=3, metavar=("MODEL", "PEER", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve, quick=args.quick)
        return 0

    models, peers, notes = [model_name(m) for m in args.models.split(",")], [], []
    for p in args.peers.split(","):
        absent = [m for m in NEEDS.get(p, []) if importlib.util.find_spec(m) is None]
        if absent:
            notes.append(f"{p} is missing ({', '.join(absent)} not installed): skipped")
        else:
            peers.append(p)
    envs = ["default"] if args.quick else args.envs.split(",")
    rounds, tasks = (1 if args.quick else args.rounds), args.tasks.split(",")
    results = {"config": {"rounds": rounds, "quick": args.quick, "envs": envs, "cpus": os.cpu_count(), "models": models,
                          "peers": peers, "tasks": tasks, "train_batch": TRAIN_BATCH, "infer_batch": INFER_BATCH,
                          "malloc_env": MALLOC_ENV}, "notes": notes}

    print("checking that every peer computes the same thing from the same weights ...", flush=True)
    check, results["check_rel_err"] = check_peers(models, peers)
    results["check"] = check
    for model, by_peer in check.items():
        print(f"  {model}: " + ", ".join(f"{p}: {s}" for p, s in by_peer.items()), flush=True)
        notes += [f"{'' if s.startswith('missing') else '!!! '}{model} / {p}: {s}"
                  + ("" if s.startswith("MISMATCH") else ", not measured") for p, s in by_peer.items() if s != "ok"]

    raw = {}          # raw[env][task][model][peer] = list over rounds of dicts
    for env, task, model in itertools.product(envs, tasks, models):
        cell = [p for p in peers if not (task == "train" and p in INFER_ONLY)
                and not check[model].get(p, "ok").startswith(("missing", "ERROR"))]
        for rnd in range(rounds):
            for peer, r in measure_round(model, cell, task, env, args.quick).items():
                if "error" in r:
                    notes.append(f"round {rnd + 1}, {env}, {task}, {model}, {peer}: {r['error']}")
                raw.setdefault(env, {}).setdefault(task, {}).setdefault(model, {}).setdefault(peer, []).append(r)
        print(f"{env} / {task} / {model}: " + ", ".join(
            f"{p} {np.median([r.get('images_per_s') or 0 for r in raw[env][task][model][p]]):,.0f}" for p in cell),
            flush=True)
    results["raw"], results["summary"] = raw, summarize(raw)

    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
