"""Occlusion speed and memory: the report's setting, timed; 10,000 images, memory bounded.

    python benchmarks/bench_occlusion.py                    # random weights (speed does not depend on them)
    python benchmarks/bench_occlusion.py --run runs/plain   # a trained run and its 10 chosen digits
    python benchmarks/bench_occlusion.py --memory-stride 6  # a quicker memory check (16 positions per image)

1. Time: the report's occlusion (patch 10, stride 2 -> 10x10 positions) of
   the 10 chosen digits is 1,000 forward passes; median of ``--repeat`` runs
   after a warm-up, beside the bare forward pass of 1,000 images (the floor).
   Goal: under 1 s.
2. Memory: occlusion of ``--memory-images`` images (default 10,000, i.e.
   1,000,000 forward passes at the report's settings) in a fresh process;
   the peak RSS growth is reported next to what materialising every
   occluded copy at once would take.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def make_classifier(run_dir=None):
    if run_dir:
        from npcnn.runs import Run
        run = Run.open(run_dir)
        images, labels = run.test_data()
        _, x, y = run.select(images, labels)
        return run.classifier, x, y
    from npcnn.classifier import Classifier
    from npcnn.data import Normalization
    from npcnn.models import seed_cnn
    rng = np.random.default_rng(0)
    x = (rng.random((10, 28, 28)) ** 4).astype(np.float32)  # sparse bright pixels
    return Classifier(seed_cnn(rng=0), Normalization(0.1307, 0.3081)), x, np.arange(10)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(args):
    """Run in a fresh process so that the peak RSS belongs to this measurement only."""
    from npcnn.analysis.occlusion import grid_size, occlusion
    clf, x, y = make_classifier(args.run)
    n = args.memory_images
    rng = np.random.default_rng(1)
    big = x[rng.integers(0, len(x), n)] + np.float32(0)          # n images [n, 28, 28]
    target = np.asarray(y)[rng.integers(0, len(y), n)]
    occlusion(clf, big[:4], target[:4], stride=args.memory_stride)   # warm-up: JIT, buffers
    before = rss_mb()
    t = time.perf_counter()
    r = occlusion(clf, big, target, patch=10, stride=args.memory_stride, batch_size=args.batch_size)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    g = grid_size(28, 10, args.memory_stride)
    print(json.dumps({"images": n, "positions": g * g, "forward_passes": n * g * g, "seconds": seconds,
                      "rss_before_mb": before, "peak_mb": peak, "result_mb": sum(
                          a.nbytes for a in (r.probability, r.predicted, r.attribution)) / 2**20}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a run folder (default: random weights and images)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--memory-images", type=int, default=10_000)
    p.add_argument("--memory-stride", type=int, default=2)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._memory_child:
        return memory_child(args)

    from npcnn.analysis.occlusion import occlusion
    clf, x, y = make_classifier(args.run)
    occlusion(clf, x, y, batch_size=args.batch_size)  # warm-up
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        r = occlusion(clf, x, y, batch_size=args.batch_size)
        times.append(time.perf_counter() - t)
    passes = r.probability.size
    flat = np.repeat(x, passes // len(x), axis=0)
    floor = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        clf.predict_proba(flat)
        floor.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"occlusion, patch 10, stride 2, {len(x)} images = {passes:,} forward passes (batch {args.batch_size}):")
    print(f"  median {med:.3f} s over {args.repeat} runs (min {min(times):.3f}, max {max(times):.3f}); "
          f"{passes / med:,.0f} passes/s; goal < 1 s: {'met' if med < 1 else 'NOT met'}")
    print(f"  bare forward pass of the same {passes:,} images: median {statistics.median(floor):.3f} s "
          f"(occlusion overhead {med / statistics.median(floor) - 1:+.0%})")
    if args.skip_memory:
        return
    cmd = [sys.executable, __file__, "--_memory-child", "--memory-images", str(args.memory_images),
           "--memory-stride", str(args.memory_stride), "--batch-size", str(args.batch_size)]
    if args.run:
        cmd += ["--run", args.run]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    naive = m["forward_passes"] * 28 * 28 * 4 / 2**20
    print(f"memory: {m['images']:,} images x {m['positions']} positions = {m['forward_passes']:,} forward passes "
          f"in {m['seconds']:.1f} s ({m['forward_passes'] / m['seconds']:,.0f}/s)")
    print(f"  peak RSS growth {m['peak_mb'] - m['rss_before_mb']:.0f} MB (results alone {m['result_mb']:.0f} MB; "
          f"every occluded copy at once would be {naive:,.0f} MB in float32)")


if __name__ == "__main__":
    main()
