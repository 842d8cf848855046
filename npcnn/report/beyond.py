"""Section 5: beyond the report (saliency, robustness, speed against PyTorch)."""
import os

import numpy as np

from ..io import load_npz
from .page import VARIANT_TITLES, esc, gallery, not_run, pct, pngs, read_json_if_any, table


def section_beyond(directory, runs):
    name, path = next(iter(runs.items()))
    parts = ["<h2 id='beyond'>5. Beyond the report</h2>", "<h3>Saliency maps</h3>"]
    saliency = os.path.join(path, "saliency")
    parts.append(gallery(pngs(saliency)) if pngs(saliency) else not_run("saliency maps", f"npcnn saliency {path}"))

    parts.append("<h3>Robustness to FGSM / PGD</h3>")
    f = os.path.join(path, "attacks", "robustness.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        variants = [os.path.basename(os.path.normpath(str(v))) for v in np.ravel(d.get("variants", np.array([name])))]
        variants = [VARIANT_TITLES.get(v, v) for v in variants]
        acc = np.atleast_2d(d["accuracy"])
        rows = [(f"{float(e):g}", *(pct(acc[v, i]) for v in range(len(variants)))) for i, e in enumerate(d["eps"])]
        label = str(d["label"]) if "label" in d else str(d["attack"])
        parts.append(f"<p>Attack: {esc(label)}; test accuracy against eps (pixel units) on "
                     f"{int(d['images']):,} test images.</p>")
        warnings = [str(w) for w in np.ravel(d["warnings"])] if "warnings" in d else []
        if warnings:
            parts.append("<div class='notrun'><strong>signs of gradient masking:</strong> "
                         + "; ".join(esc(w) for w in warnings) + "</div>")
        parts.append(table(["eps", *variants], rows))
        parts.append(gallery(pngs(os.path.join(path, "attacks"), "robustness*.png")))
    else:
        parts.append(not_run("robustness curves", f"npcnn attack {path} robustness"))

    parts.append("<h3>Speed against PyTorch</h3>")
    bench = read_json_if_any(os.path.join(directory, "benchmark.json"))
    if bench and bench.get("summary"):
        config = bench.get("config", {})
        parts.append(f"<p>{esc(BENCH_NOTE)} {config.get('rounds', '?')} round(s)"
                     f"{' (--quick: a few steps, not a measurement)' if config.get('quick') else ''}; "
                     f"{config.get('cpus', '?')} CPUs.</p>")
        parts.append(table(SPEED_HEADER, speed_rows(bench["summary"])))
    else:
        parts.append(not_run("the speed benchmark",
                             f"python benchmarks/bench_train.py --json {os.path.join(directory, 'benchmark.json')}"))
    return "\n".join(parts)


BENCH_NOTE = ("From benchmark.json, written by benchmarks/bench_train.py: medians over rounds; in brackets "
              "npcnn / peer in the same round (> 1: npcnn is faster).")
SPEED_HEADER = ["environment", "peer", "train img/s (batch 64)", "train + BatchNorm", "inference img/s (batch 1000)",
                "attack steps/s, 1 image", "10 images", "90 images"]
_SPEED_CELLS = [("train", "images_per_s"), ("train_bn", "images_per_s"), ("infer", "images_per_s"),
                ("attack", "steps_per_s_1"), ("attack", "steps_per_s_10"), ("attack", "steps_per_s_90")]


def speed_rows(summary):
    """One row per (environment, peer) of bench_train.py's ``summary``: the medians and npcnn's ratios."""
    rows = []
    for env, by_task in summary.items():
        peers = list(dict.fromkeys(p for task in by_task.values() for p in task))
        peers.sort(key=lambda p: p != "npcnn")                 # npcnn first, the peers as measured
        for peer in peers:
            cells = []
            for task, metric in _SPEED_CELLS:
                d = by_task.get(task, {}).get(peer, {})
                if metric not in d:
                    cells.append("-")
                    continue
                cell = f"{d[metric]:,.1f}" if d[metric] < 100 else f"{d[metric]:,.0f}"
                ratio = d.get(metric + "_npcnn_ratio")
                cells.append(cell + (f" (x{ratio:.2f})" if peer != "npcnn" and ratio is not None else ""))
            rows.append([env, peer, *cells])
    return rows
