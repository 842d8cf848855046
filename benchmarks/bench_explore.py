"""`npcnn explore` speed: one /api/analyze round trip, and a 300-step attack, over real HTTP.

    python benchmarks/bench_explore.py --run runs/plain     # a trained run
    python benchmarks/bench_explore.py                      # a random-weight net in a temporary run folder

Starts the explorer's server on 127.0.0.1 (a free port, in a thread of this process, as ``npcnn explore``
runs it) and times, from the client's side (request encoded, sent, computed, answered, decoded):

1. ``/api/analyze`` of one drawn digit (strokes -> 28 x 28 -> every layer's output and gradient), as the
   page asks for it (``"encoding": "base64"``); median of ``--repeat`` calls after a warm-up. Goal < 50 ms.
   The same with ``"encoding": "lists"`` (plain JSON numbers), for scripts.
2. ``/api/attack`` with the default 300 Adam steps toward class 3; median of ``--attack-repeat``. Goal < 1 s.

Prints one line per measurement and, with ``--json``, writes them to a file.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request


STROKES = [[[80, 60], [200, 60], [190, 90], [130, 240]], [[110, 150], [190, 150]]]


def temporary_run(folder):
    from npcnn.data import Normalization
    from npcnn.io import write_json
    from npcnn.models import save_model, seed_cnn
    from npcnn.runs import FORMAT

    names = [str(c) for c in range(10)]
    save_model(os.path.join(folder, "model.npz"), seed_cnn(rng=0), Normalization(0.1307, 0.3081),
               batchnorm=False, class_names=names)
    write_json(os.path.join(folder, "config.json"), {"format": FORMAT, "dataset": "mnist", "class_names": names})
    return folder


def post(url, body):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as res:
        return json.loads(res.read())


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained run folder (default: random weights)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--attack-repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from npcnn.explore import create_app
    from npcnn.explore.server import Server

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or temporary_run(tmp)
        server = Server(create_app(run_dir), quiet=True).start()
        try:
            analyze = server.url + "api/analyze"
            image = post(analyze, {"strokes": STROKES})["image"]
            for _ in range(5):
                post(analyze, {"strokes": STROKES, "encoding": "base64"})           # warm-up
            results = {}
            results["analyze_base64_ms"] = [1e3 * t for t in timed(
                lambda: post(analyze, {"strokes": STROKES, "target": None, "encoding": "base64"}), args.repeat)]
            results["analyze_image_base64_ms"] = [1e3 * t for t in timed(
                lambda: post(analyze, {"image": image, "target": 3, "encoding": "base64"}), args.repeat)]
            results["analyze_lists_ms"] = [1e3 * t for t in timed(
                lambda: post(analyze, {"image": image, "target": 3}), max(5, args.repeat // 5))]
            attack = server.url + "api/attack"
            post(attack, {"image": image, "target": 3, "steps": 10})                # warm-up
            out = {}

            def run_attack():
                out.update(post(attack, {"image": image, "target": 3}))

            results["attack_300_steps_s"] = list(timed(run_attack, args.attack_repeat))
        finally:
            server.stop()

    print(f"explore benchmark ({'run ' + args.run if args.run else 'random weights'}), "
          f"{os.cpu_count()} cores; median (best)")
    print(f"  /api/analyze, drawn strokes, base64 : {results['analyze_base64_ms'][0]:7.1f} ms "
          f"({results['analyze_base64_ms'][1]:.1f})   goal < 50 ms")
    print(f"  /api/analyze, 28x28 image, base64   : {results['analyze_image_base64_ms'][0]:7.1f} ms "
          f"({results['analyze_image_base64_ms'][1]:.1f})")
    print(f"  /api/analyze, 28x28 image, lists    : {results['analyze_lists_ms'][0]:7.1f} ms "
          f"({results['analyze_lists_ms'][1]:.1f})")
    print(f"  /api/attack, 300 steps              : {results['attack_300_steps_s'][0]:7.3f} s  "
          f"({results['attack_300_steps_s'][1]:.3f})   goal < 1 s   "
          f"(reached {out['prediction']}, p(3) = {out['probabilities'][3]:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
