"""Attack loops: npcnn against the same loops written in PyTorch, measured in one run.

    python benchmarks/bench_attacks.py                 # both loops, then the full report setting
    python benchmarks/bench_attacks.py --no-full       # skip the 15,000-step run
    python benchmarks/bench_attacks.py --threads 1     # same thread count for numpy/numba/torch

Two loops, each one Adam step (maximize=True) on the input per iteration, one forward and one
backward through the reference net (float32, eval mode, parameter gradients skipped):

* class images: 10 images per step (all ten classes at once), the report's lr 0.05;
* targeted matrix: 90 images per step (every digit to every other class), beta 1e-4.

The PyTorch version is the textbook one: autograd + ``torch.optim.Adam`` on a leaf tensor (torch
computes parameter gradients it does not need unless they are switched off; we switch them off,
as npcnn does). Weights are random: speed does not depend on them. Reported: median seconds per
step over several repeats, steps per second and the ratio. Then the report's full class-image
setting (15,000 steps, all ten classes) is timed end to end; the goal is under 60 s.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="steps per repeat (default 30)")
    p.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported (default 5)")
    p.add_argument("--threads", type=int, help="threads for numpy's BLAS, numba and torch (default: as is; "
                                               "torch is set to numba's count)")
    p.add_argument("--no-full", action="store_true", help="skip the full 15,000-step class-image run")
    return p.parse_args()


def main():
    args = parse()
    import npcnn.kernels  # noqa: F401  (first: it picks numba's threading layer before numba starts one)
    import numba
    import threadpoolctl
    import torch

    if args.threads:
        threadpoolctl.threadpool_limits(args.threads)
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    blas = [i.get("num_threads") for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]

    from torch_oracle import to_torch

    from npcnn.analysis import attacks as A
    from npcnn.classifier import Classifier
    from npcnn.data import Normalization
    from npcnn.models import seed_cnn

    norm = Normalization(0.1307, 0.3081)
    model = seed_cnn(rng=0)
    clf = Classifier(model, norm)
    net = to_torch(model).eval()
    body = torch.nn.Sequential(*list(net)[:-1])
    for p in body.parameters():
        p.requires_grad_(False)

    rng = np.random.default_rng(0)
    digits = rng.random((10, 28, 28)).astype(np.float32)
    src, tgt = A.target_pairs(np.arange(10), "all")

    def ours_class(steps):
        A.class_images(clf, steps=steps, progress=False)

    def ours_targeted(steps):
        A.targeted(clf, digits[src], tgt, steps=steps, progress=False)

    def torch_loop(x0, targets, lr, beta, steps):
        z0 = torch.from_numpy(((x0 - norm.mean) / norm.std).astype(np.float32)[:, None])
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr, maximize=True)
        rows, t = torch.arange(len(targets)), torch.as_tensor(targets)
        for _ in range(steps):
            opt.zero_grad()
            obj = body(z)[rows, t]
            if beta:
                obj = obj - beta * ((z - z0) ** 2).sum(dim=(1, 2, 3))
            obj.sum().backward()
            opt.step()

    def torch_class(steps):
        torch_loop(rng.random((10, 28, 28)).astype(np.float32), np.arange(10), 0.05, 0.0, steps)

    def torch_targeted(steps):
        torch_loop(digits[src], tgt, 0.01, 1e-4, steps)

    def per_step(fn):
        fn(2)  # warm-up (numba compiles, buffers)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn(args.steps)
            times.append((time.perf_counter() - t) / args.steps)
        return statistics.median(times)

    print(f"threads: numba {threads}, numpy BLAS {blas}, torch {torch.get_num_threads()}; "
          f"{args.repeats} x {args.steps} steps, median")
    print(f"{'loop':<28}{'npcnn steps/s':>15}{'torch steps/s':>15}{'npcnn / torch':>15}")
    for name, ours, theirs in [("class images (10 / step)", ours_class, torch_class),
                               ("targeted matrix (90 / step)", ours_targeted, torch_targeted)]:
        a, b = per_step(ours), per_step(theirs)
        print(f"{name:<28}{1 / a:>15.1f}{1 / b:>15.1f}{b / a:>14.2f}x", flush=True)

    if not args.no_full:
        t = time.perf_counter()
        r = A.class_images(clf, steps=15_000, progress=True)
        s = time.perf_counter() - t
        print(f"full report setting: class images, 15,000 steps, all ten classes: {s:.1f} s "
              f"({15_000 / s:.0f} steps/s; goal < 60 s: {'met' if s < 60 else 'NOT met'}); "
              f"final logits {np.round(r.history[-1], 1).tolist()}")


if __name__ == "__main__":
    main()
