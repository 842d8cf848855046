"""npcnn against its peers on the reference net: training, inference, the attack loop, memory, compile time.

    python benchmarks/bench_train.py [--rounds 5] [--quick] [--json results.json] [--envs default,malloc]

What it measures (MNIST-shaped random batches, float32, the reference net
``npcnn.models.seed_cnn()`` and its BatchNorm variant):

* **train**: images/s of training steps (forward + NLL loss + backward + Adam), batch 64;
* **infer**: images/s of forward passes (eval mode), batch 1000;
* **attack**: steps/s of the attack loop on 1, 10 and 90 images: forward, the
  gradient of the target log-probability with respect to the input only,
  one Adam step (maximize) on the image. npcnn's path is
  ``fast.plan(model).backward(g, param_grads=False)`` + ``npcnn.optim.Adam`` on a
  ``Parameter`` image;
* **peak RSS** (``VmHWM``, i.e. the ``ru_maxrss`` of this process alone) of each measuring subprocess;
* the **GEMM floor**: the net's own GEMMs of a training step timed through
  NumPy's BLAS, and the share of it npcnn reaches;
* **input gradient vs full backward** for npcnn (the occlusion/attack path);
* **numba compile time** on first use (fresh process, cold ``NUMBA_CACHE_DIR``)
  and again with the warm cache (should be ~0).

Peers, each in its fastest configuration, each checked first to compute the
same thing from the same weights (loss, log-probabilities and input gradient
to tolerance): PyTorch eager NCHW and channels_last (same thread count as
npcnn), JAX ``jit`` on CPU (NHWC; reported as missing if jax is not
installed), and the plain-NumPy baseline in ``benchmarks/numpy_baseline.py``.

Every measurement runs in its own subprocess; peers are interleaved round by
round, under the default environment and under a tuned glibc malloc
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
which PyTorch benefits from). In the default environment each library runs as it comes: npcnn
raises the same thresholds itself at import (``npcnn.allocator``), the other peers' workers turn
that off (``NPCNN_TUNE_MALLOC=0``, :func:`peer_env`). The report gives medians over rounds and the
median of the same-round ratios npcnn / peer. ``--quick`` runs a few steps in
one round (for CI; asserts nothing about speed). ``--json PATH`` writes every
number.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "268435456"}
PEERS = ["npcnn", "torch", "torch_cl", "jax", "numpy"]
TASKS = ["train", "train_bn", "infer", "attack"]
ATTACK_SIZES = (1, 10, 90)
TRAIN_BATCH, INFER_BATCH = 64, 1000


# =========================================================================== the peers
def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def _npcnn_state(batchnorm):
    from npcnn import seed_cnn
    return seed_cnn(batchnorm=batchnorm, rng=0).state_dict()


class NpcnnPeer:
    def __init__(self, batchnorm=False):
        from npcnn import NLLLoss, fast, seed_cnn
        from npcnn.optim import Adam
        self.model = seed_cnn(batchnorm=batchnorm, rng=0)
        self.net = fast.plan(self.model)            # the fast path, as training and the Classifier run it
        self.loss = NLLLoss()
        self.opt = Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, x, t):
        self.model.train()
        self.opt.zero_grad()
        loss = self.loss.forward(self.net.forward(x), t)
        self.net.backward(self.loss.backward(), input_grad=False)  # as npcnn.train does
        self.opt.step()
        return float(loss)

    def infer(self, x):
        self.model.eval()
        return self.net.forward(x, inference=True)

    def attack_setup(self, x, t):
        from npcnn.nn import Parameter
        from npcnn.optim import Adam
        self.model.eval()
        self.img = Parameter(x.copy())
        self.attack_opt = Adam([self.img], lr=1e-2, maximize=True)
        self.onehot = np.zeros((len(x), 10), np.float32)
        self.onehot[np.arange(len(x)), t] = 1.0

    def attack_step(self):
        self.net.forward(self.img.data)
        self.img.grad = self.net.backward(self.onehot, param_grads=False)
        self.attack_opt.step()

    def logp_and_input_grad(self, x, t):
        self.model.eval()
        logp = self.net.forward(x)
        onehot = np.zeros_like(logp)
        onehot[np.arange(len(x)), t] = 1.0
        return logp, self.net.backward(onehot, param_grads=False)


class TorchPeer:
    def __init__(self, batchnorm=False, channels_last=False):
        import torch
        torch.set_num_threads(os.cpu_count())
        nn = torch.nn
        layers = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(32))
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(32))
        layers += [nn.Flatten(), nn.Linear(1568, 500), nn.ReLU(), nn.Linear(500, 10), nn.LogSoftmax(dim=1)]
        self.model = nn.Sequential(*layers)
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in _npcnn_state(batchnorm).items()})
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.torch = torch

    def _x(self, x):
        return self.torch.from_numpy(x).contiguous(memory_format=self.fmt)

    def train_step(self, x, t):
        torch = self.torch
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.nll_loss(self.model(self._x(x)), torch.from_numpy(t))
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self, x):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self._x(x))

    def attack_setup(self, x, t):
        torch = self.torch
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.img = self._x(x.copy()).requires_grad_(True)
        self.attack_opt = torch.optim.Adam([self.img], lr=1e-2, maximize=True)
        self.t = torch.from_numpy(t)
        self.rows = torch.arange(len(x))

    def attack_step(self):
        self.attack_opt.zero_grad(set_to_none=True)
        self.model(self.img)[self.rows, self.t].sum().backward()
        self.attack_opt.step()

    def logp_and_input_grad(self, x, t):
        torch = self.torch
        self.model.eval()
        xt = self._x(x.copy()).requires_grad_(True)
        logp = self.model(xt)
        logp[torch.arange(len(x)), torch.from_numpy(t)].sum().backward()
        return logp.detach().numpy(), xt.grad.numpy()


class JaxPeer:
    def __init__(self, batchnorm=False):
        if batchnorm:
            raise NotImplementedError("the JAX peer has no BatchNorm variant")
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        s = _npcnn_state(False)
        # NHWC activations, HWIO conv kernels, (in, out) dense kernels
        self.params = {
            "c1w": jnp.asarray(s["0.weight"].transpose(2, 3, 1, 0)), "c1b": jnp.asarray(s["0.bias"]),
            "c2w": jnp.asarray(s["3.weight"].transpose(2, 3, 1, 0)), "c2b": jnp.asarray(s["3.bias"]),
            # fc1 rows follow npcnn's NCHW flatten: permute them to NHWC flatten order
            "f1w": jnp.asarray(s["7.weight"].reshape(500, 32, 7, 7).transpose(2, 3, 1, 0).reshape(1568, 500)),
            "f1b": jnp.asarray(s["7.bias"]),
            "f2w": jnp.asarray(s["9.weight"].T), "f2b": jnp.asarray(s["9.bias"]),
        }
        lax = jax.lax

        def forward(p, x):                                  # x NHWC
            def conv(h, w, b):
                return lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

            def pool(h):
                return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            h = pool(jax.nn.relu(conv(x, p["c1w"], p["c1b"])))
            h = pool(jax.nn.relu(conv(h, p["c2w"], p["c2b"])))
            h = h.reshape(h.shape[0], -1)
            h = jax.nn.relu(h @ p["f1w"] + p["f1b"])
            return jax.nn.log_softmax(h @ p["f2w"] + p["f2b"], axis=1)

        def loss_fn(p, x, t):
            return -jnp.take_along_axis(forward(p, x), t[:, None], axis=1).mean()

        def adam(p, g, m, v, step, lr, maximize=False):
            b1, b2, eps = 0.9, 0.999, 1e-8
            sign = -1.0 if maximize else 1.0
            m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * sign * g_, m, g)
            v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
            p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - lr / bc1 * m_ / (jnp.sqrt(v_ / bc2) + eps), p, m, v)
            return p, m, v

        @jax.jit
        def train_step(p, m, v, step, x, t):
            loss, g = jax.value_and_grad(loss_fn)(p, x, t)
            p, m, v = adam(p, g, m, v, step, 1e-3)
            return p, m, v, loss

        def target_logp(x, p, t):
            return jnp.take_along_axis(forward(p, x), t[:, None], axis=1).sum()

        @jax.jit
        def attack_step(img, m, v, step, p, t):
            g = jax.grad(target_logp)(img, p, t)
            return adam(img, g, m, v, step, 1e-2, maximize=True)

        self.forward = jax.jit(forward)
        self._train_step, self._attack_step = train_step, attack_step
        self._input_grad = jax.jit(jax.grad(target_logp))
        self.m = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.v = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.step = 0

    def _x(self, x):
        return self.jnp.asarray(x.transpose(0, 2, 3, 1))

    def train_step(self, x, t):
        self.step += 1
        self.params, self.m, self.v, loss = self._train_step(self.params, self.m, self.v, float(self.step),
                                                             self._x(x), self.jnp.asarray(t))
        return float(loss)

    def infer(self, x):
        return self.forward(self.params, self._x(x)).block_until_ready()

    def attack_setup(self, x, t):
        self.img = self._x(x)
        self.am, self.av = self.jnp.zeros_like(self.img), self.jnp.zeros_like(self.img)
        self.astep, self.at = 0, self.jnp.asarray(t)

    def attack_step(self):
        self.astep += 1
        self.img, self.am, self.av = self._attack_step(self.img, self.am, self.av, float(self.astep),
                                                       self.params, self.at)
        self.img.block_until_ready()

    def logp_and_input_grad(self, x, t):
        logp = np.asarray(self.forward(self.params, self._x(x)))
        g = np.asarray(self._input_grad(self._x(x), self.params, self.jnp.asarray(t)))
        return logp, g.transpose(0, 3, 1, 2)


class NumpyPeer:
    def __init__(self, batchnorm=False):
        if batchnorm:
            raise NotImplementedError("the NumPy baseline has no BatchNorm variant")
        from numpy_baseline import NumpyNet
        self.net = NumpyNet(_npcnn_state(False))

    def train_step(self, x, t):
        return float(self.net.train_step(x, t))

    def infer(self, x):
        return self.net.forward(x)

    def attack_setup(self, x, t):
        self.img, self.t = x.copy(), t
        self.m, self.v, self.k = np.zeros_like(x), np.zeros_like(x), 0

    def attack_step(self):
        self.net._logp = logp = self.net.forward(self.img)
        g = np.zeros_like(logp)
        g[np.arange(len(self.t)), self.t] = 1.0
        grad = -self.net.backward(g)                        # maximize
        self.k += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad * grad
        self.img -= (1e-2 / (1 - 0.9 ** self.k) * self.m / (np.sqrt(self.v / (1 - 0.999 ** self.k)) + 1e-8)
                     ).astype(np.float32)

    def logp_and_input_grad(self, x, t):
        self.net._logp = logp = self.net.forward(x)
        g = np.zeros_like(logp)
        g[np.arange(len(t)), t] = 1.0
        return logp, self.net.backward(g)


def make_peer(name, batchnorm=False):
    if name == "npcnn":
        return NpcnnPeer(batchnorm)
    if name in ("torch", "torch_cl"):
        return TorchPeer(batchnorm, channels_last=name == "torch_cl")
    if name == "jax":
        return JaxPeer(batchnorm)
    if name == "numpy":
        return NumpyPeer(batchnorm)
    raise ValueError(name)


# =========================================================================== one measurement (in a subprocess)
def _timed(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def measure(peer_name, task, quick):
    """Run one task for one peer in this process; returns a dict of numbers."""
    steps = 3 if quick else None
    out = {}
    if task in ("train", "train_bn"):
        peer = make_peer(peer_name, batchnorm=task == "train_bn")
        x, t = _data(TRAIN_BATCH)
        n = steps or (10 if peer_name == "numpy" else 40)
        out["images_per_s"] = TRAIN_BATCH / _timed(lambda: peer.train_step(x, t), n, 2 if quick else 5)
    elif task == "infer":
        peer = make_peer(peer_name)
        x, _ = _data(INFER_BATCH)
        n = steps or (3 if peer_name == "numpy" else 10)
        out["images_per_s"] = INFER_BATCH / _timed(lambda: peer.infer(x), n, 1 if quick else 2)
    elif task == "attack":
        peer = make_peer(peer_name)
        for size in ATTACK_SIZES:
            x, t = _data(size, seed=size)
            peer.attack_setup(x, t)
            n = steps or max(10, int(600 / size)) // (4 if peer_name == "numpy" else 1)
            out[f"steps_per_s_{size}"] = 1.0 / _timed(peer.attack_step, n, 2 if quick else 5)
    elif task == "extras" and peer_name == "npcnn":
        out.update(npcnn_extras(quick))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb():
    """Peak resident memory of this process. VmHWM (Linux) rather than ru_maxrss, which on Linux
    survives execve and so would report the orchestrator's peak for every subprocess."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def npcnn_extras(quick):
    """Input gradient vs full backward, and the GEMM floor of a training step."""
    from npcnn import fast, seed_cnn
    out = {}
    reps = 5 if quick else 30
    for batch in (10, 64):
        model = fast.plan(seed_cnn(rng=0)).eval()      # the fast path, as occlusion and the attacks run it
        x, _ = _data(batch)
        g = np.ones((batch, 10), np.float32)
        model.forward(x)
        model.backward(g)
        full, inp = [], []
        for _ in range(reps):
            model.forward(x)
            model.zero_grad()
            t0 = time.perf_counter()
            model.backward(g, param_grads=True)
            full.append(time.perf_counter() - t0)
            model.forward(x)
            t0 = time.perf_counter()
            model.backward(g, param_grads=False)
            inp.append(time.perf_counter() - t0)
        out[f"backward_full_ms_{batch}"] = float(np.median(full) * 1e3)
        out[f"backward_input_only_ms_{batch}"] = float(np.median(inp) * 1e3)
        out[f"input_grad_speedup_{batch}"] = float(np.median(full) / np.median(inp))
    out["gemm_floor_ms"] = gemm_floor_ms(reps)
    peer = NpcnnPeer()
    x, t = _data(TRAIN_BATCH)
    out["train_step_ms"] = _timed(lambda: peer.train_step(x, t), reps, 3) * 1e3
    out["gemm_floor_share"] = out["gemm_floor_ms"] / out["train_step_ms"]
    return out


def gemm_floor_ms(reps=30, batch=TRAIN_BATCH):
    """The GEMMs of one training step of the reference net (forward, dW, dx), through NumPy's BLAS."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    shapes = []                                   # (M, K) @ (K, N)
    for c, hw in ((1, 28), (32, 14)):             # conv1, conv2: W(32, K) @ cols(K, N*P) and its two adjoints
        k, npix = c * 9, batch * hw * hw
        shapes += [(32, k, npix), (32, npix, k), (k, 32, npix)]
    for fin, fout in ((1568, 500), (500, 10)):    # fc1, fc2
        shapes += [(batch, fin, fout), (fout, batch, fin), (batch, fout, fin)]
    total = 0.0
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(f32)
        b = rng.standard_normal((k, n)).astype(f32)
        ts = []
        for _ in range(reps + 2):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        total += float(np.median(ts[2:]))
    return total * 1e3


def check_peers(peers, tol=2e-4):
    """Same weights -> same log-probabilities, loss and input gradient (float32 tolerance)."""
    x, t = _data(16, seed=7)
    ref = make_peer("npcnn")
    logp_ref, g_ref = ref.logp_and_input_grad(x, t)
    loss_ref = ref.train_step(x, t)
    result = {}
    for name in peers:
        if name == "npcnn":
            continue
        try:
            peer = make_peer(name)
        except ImportError as e:
            result[name] = f"missing ({e})"
            continue
        logp, g = peer.logp_and_input_grad(x, t)
        loss = peer.train_step(x, t)
        err = max(np.abs(np.asarray(logp) - logp_ref).max() / np.abs(logp_ref).max(),
                  np.abs(np.asarray(g) - g_ref).max() / np.abs(g_ref).max(),
                  abs(loss - loss_ref) / abs(loss_ref))
        result[name] = "ok" if err < tol else f"MISMATCH (relative error {err:.2e})"
        result[name + "_rel_err"] = float(err)
    return result


def compile_times():
    """First-use numba compile time (cold NUMBA_CACHE_DIR) and again with the warm cache."""
    code = ("import time, numpy as np; t0 = time.perf_counter(); "
            "from npcnn import fast, seed_cnn, NLLLoss; from npcnn.optim import Adam; "
            "m = fast.plan(seed_cnn()); m_bn = fast.plan(seed_cnn(batchnorm=True)); "
            "x = np.zeros((4, 1, 28, 28), np.float32); "
            "t = np.zeros(4, np.int64); L = NLLLoss()\n"
            "def step(net):\n"
            "    o = Adam(net.parameters()); L.forward(net.forward(x), t); net.backward(L.backward()); o.step()\n"
            "t0 = time.perf_counter(); step(m); step(m_bn); first = time.perf_counter() - t0\n"
            "t0 = time.perf_counter(); step(m); step(m_bn); second = time.perf_counter() - t0\n"
            "print(first - second)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold_cache_s", "warm_cache_s"):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
            out[label] = float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else r.stderr[-300:]
    return out


# =========================================================================== the orchestrator
def peer_env(peer, env_name):
    """The environment a peer's worker runs in: the malloc-tuned variables for "malloc"; and for every peer
    but npcnn, NPCNN_TUNE_MALLOC=0, so that the workers that import npcnn (to build the same net) do not
    get the malloc tuning npcnn does at import (npcnn.allocator): each library runs as it comes."""
    env = dict(os.environ, **(MALLOC_ENV if env_name == "malloc" else {}))
    if peer != "npcnn":
        env["NPCNN_TUNE_MALLOC"] = "0"
    return env


def run_worker(peer, task, env_name, quick):
    env = peer_env(peer, env_name)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", peer, task] + (["--quick"] if quick else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _jax_available():
    try:
        import importlib.util
        return importlib.util.find_spec("jax") is not None
    except Exception:
        return False


def _metrics(task):
    if task == "attack":
        return [f"steps_per_s_{s}" for s in ATTACK_SIZES]
    return ["images_per_s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description="npcnn vs PyTorch, JAX and plain NumPy on the reference net")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a few steps, one round, default env only (CI)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--envs", default="default,malloc")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--worker", nargs=2, metavar=("PEER", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(*args.worker, quick=args.quick)))
        return 0

    peers = args.peers.split(",")
    notes = []
    if "jax" in peers and not _jax_available():
        peers.remove("jax")
        notes.append("jax is not installed (pip install jax): the JAX peer is skipped")
    envs = ["default"] if args.quick else args.envs.split(",")
    rounds = 1 if args.quick else args.rounds
    tasks = args.tasks.split(",")
    results = {"config": {"rounds": rounds, "quick": args.quick, "envs": envs, "cpus": os.cpu_count(),
                          "train_batch": TRAIN_BATCH, "infer_batch": INFER_BATCH, "attack_sizes": ATTACK_SIZES,
                          "malloc_env": MALLOC_ENV},
               "notes": notes}
    print("checking that every peer computes the same thing ...", flush=True)
    results["check"] = check_peers(peers)
    print("  " + ", ".join(f"{k}: {v}" for k, v in results["check"].items() if not k.endswith("_rel_err")))

    raw = {}          # raw[env][task][peer] = list over rounds of dicts
    for rnd in range(rounds):
        for env in envs:
            for task in tasks:
                for peer in peers:
                    if task == "train_bn" and peer in ("jax", "numpy"):
                        continue
                    r = run_worker(peer, task, env, args.quick)
                    raw.setdefault(env, {}).setdefault(task, {}).setdefault(peer, []).append(r)
        print(f"round {rnd + 1}/{rounds} done", flush=True)
    results["raw"] = raw
    results["extras"] = run_worker("npcnn", "extras", "default", args.quick)
    results["compile"] = compile_times()

    # medians and same-round ratios
    summary = {}
    for env, by_task in raw.items():
        for task, by_peer in by_task.items():
            for metric in _metrics(task) + ["peak_rss_mb"]:
                for peer, runs in by_peer.items():
                    vals = [r[metric] for r in runs if metric in r]
                    if vals:
                        summary.setdefault(env, {}).setdefault(task, {}).setdefault(peer, {})[metric] = \
                            float(np.median(vals))
                    if peer != "npcnn" and "npcnn" in by_peer:
                        pairs = [(a[metric], b[metric]) for a, b in zip(by_peer["npcnn"], runs)
                                 if metric in a and metric in b]
                        if pairs:
                            ratio = float(np.median([a / b for a, b in pairs]))
                            summary[env][task][peer][metric + "_npcnn_ratio"] = ratio
    results["summary"] = summary

    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


def report(results):
    lines = []
    for note in results["notes"]:
        lines.append(f"note: {note}")
    for env, by_task in results["summary"].items():
        lines.append(f"\n## environment: {env}" + (" (glibc malloc tuned)" if env == "malloc" else ""))
        lines.append("| peer | train img/s | train+BN img/s | infer img/s | attack 1 | attack 10 | attack 90 | "
                     "peak RSS train MB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        peers = sorted({p for t in by_task.values() for p in t}, key=lambda p: PEERS.index(p))

        def cell(task, peer, metric, fmt="{:,.0f}"):
            d = by_task.get(task, {}).get(peer, {})
            if metric not in d:
                return "-"
            s = fmt.format(d[metric])
            if peer != "npcnn" and metric + "_npcnn_ratio" in d:
                s += f" (npcnn x{d[metric + '_npcnn_ratio']:.2f})"
            return s
        for p in peers:
            lines.append(f"| {p} | {cell('train', p, 'images_per_s')} | {cell('train_bn', p, 'images_per_s')} | "
                         f"{cell('infer', p, 'images_per_s')} | "
                         + " | ".join(cell("attack", p, f"steps_per_s_{s}", "{:,.1f}") for s in ATTACK_SIZES)
                         + f" | {cell('train', p, 'peak_rss_mb', '{:,.0f}')} |")
    lines.append("\n(x = median over rounds of npcnn / peer in the same round; > 1 means npcnn is faster, "
                 "for RSS smaller is better)")
    ex = results.get("extras", {})
    if "gemm_floor_ms" in ex:
        lines.append(f"\nGEMM floor of a training step (batch 64): {ex['gemm_floor_ms']:.2f} ms; npcnn step "
                     f"{ex['train_step_ms']:.2f} ms -> {ex['gemm_floor_share']:.0%} of the floor")
        for b in (10, 64):
            lines.append(f"backward at batch {b}: full {ex[f'backward_full_ms_{b}']:.2f} ms, input gradient only "
                         f"{ex[f'backward_input_only_ms_{b}']:.2f} ms -> x{ex[f'input_grad_speedup_{b}']:.2f}")
    c = results.get("compile", {})
    lines.append(f"numba compile on first use: {c.get('cold_cache_s')} s (cold cache), "
                 f"{c.get('warm_cache_s')} s (warm cache)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
