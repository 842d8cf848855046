"""A run's results as one self-contained HTML page.

:func:`write_report` reads what a directory holds (one run folder, or a
``npcnn reproduce`` directory with the ``plain/`` and ``batchnorm/`` runs)
and writes ``report.html``: figures embedded as base64 PNG, styles inline,
no script, no font or file from elsewhere, so it opens from disk with no
network. Every number on the page is read from the run's files; a stage that
has not been run is shown as "not run" with the command that runs it.
"""
import base64
import glob
import html
import os

import numpy as np

from .io import atomic_path, load_npz, read_json
from .runs import FORMAT

VARIANT_TITLES = {"plain": "without BatchNorm", "batchnorm": "with BatchNorm"}


class ReportError(ValueError):
    """The directory is not something a report can be made from."""


# ----------------------------------------------------------------------------- finding the runs


def find_runs(directory):
    """The run folders of ``directory``: {variant name: path}. A clear error for foreign or old folders."""
    if not os.path.isdir(directory):
        raise ReportError(f"{directory}: no such directory")
    candidates = {}
    if os.path.isfile(os.path.join(directory, "config.json")):
        config = read_json(os.path.join(directory, "config.json"))
        candidates["batchnorm" if config.get("batchnorm") else "plain"] = directory
    else:
        for name in VARIANT_TITLES:
            if os.path.isfile(os.path.join(directory, name, "config.json")):
                candidates[name] = os.path.join(directory, name)
    if not candidates:
        raise ReportError(f"{directory}: no npcnn run here (expected config.json, or plain/ and batchnorm/ "
                          f"run folders from `npcnn reproduce`)")
    for name, path in candidates.items():
        version = read_json(os.path.join(path, "config.json")).get("format")
        if version != FORMAT:
            raise ReportError(f"{path}: run folder format {version!r}, this npcnn reads format {FORMAT}; "
                              f"rerun `npcnn reproduce` or `npcnn train` to regenerate it")
    return candidates


def _json(path):
    return read_json(path) if os.path.isfile(path) else None


# ----------------------------------------------------------------------------- HTML pieces


def esc(value):
    return html.escape(str(value))


def img(path, caption=None):
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    caption = caption if caption is not None else os.path.splitext(os.path.basename(path))[0].replace("_", " ")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(header, rows, cls=""):
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def not_run(what, command):
    return (f'<div class="notrun"><strong>not run:</strong> {esc(what)}. Run <code>{esc(command)}</code> '
            f"and then <code>npcnn report</code> again.</div>")


def pct(x):
    return f"{100 * float(x):.2f} %"


def pngs(folder, pattern="*.png"):
    return sorted(glob.glob(os.path.join(folder, pattern)))


def gallery(paths):
    return '<div class="gallery">' + "".join(img(p) for p in paths) + "</div>"


# ----------------------------------------------------------------------------- sections


def section_setup(runs):
    first = next(iter(runs.values()))
    config = read_json(os.path.join(first, "config.json"))
    metrics = _json(os.path.join(first, "metrics.json"))
    parts = ["<h2 id='setup'>1. Setup</h2>"]
    versions = config.get("versions", {})
    parts.append("<h3>Libraries</h3>" + table(["library", "version"], sorted(versions.items())))
    keys = ["dataset", "data_source", "epochs", "batch_size", "lr", "seed", "limit"]
    rows = [(k, config.get(k)) for k in keys] + [("optimiser", "Adam"), ("loss", "NLL on log-softmax"),
                                                 ("normalisation", f"mean {config['normalization']['mean']:.4f}, "
                                                                   f"std {config['normalization']['std']:.4f}")]
    parts.append("<h3>Hyperparameters</h3>" + table(["setting", "value"], rows))
    for name, path in runs.items():
        m = _json(os.path.join(path, "metrics.json"))
        if m is None:
            continue
        rows = [(r["index"], r["layer"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}",
                 f"{r['neurons']:,}") for r in m["layers"]]
        rows.append(("", "total", "", f"{m['parameters']:,}", f"{m['neurons']:,}"))
        parts.append(f"<h3>The network {esc(VARIANT_TITLES[name])}</h3>"
                     + table(["#", "layer", "output shape", "parameters", "neurons"], rows, "net"))
    if metrics is None:
        parts.append(not_run("training", "npcnn train"))
    return "\n".join(parts)


def classification_table(report, class_names):
    rows = []
    for name in class_names + ["macro avg", "weighted avg"]:
        r = report[name]
        rows.append((name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1-score']:.4f}", int(r["support"])))
    rows.append(("accuracy", "", "", f"{report['accuracy']:.4f}", int(report["macro avg"]["support"])))
    return table(["class", "precision", "recall", "f1-score", "support"], rows)


def section_training(directory, runs):
    parts = ["<h2 id='training'>2. Training</h2>"]
    summary = []
    for name, path in runs.items():
        m = _json(os.path.join(path, "metrics.json"))
        title = VARIANT_TITLES[name]
        if m is None:
            parts.append(f"<h3>{esc(title)}</h3>" + not_run(f"training {title}", f"npcnn train --out {path}"))
            continue
        config = read_json(os.path.join(path, "config.json"))
        per_epoch = m["seconds_per_epoch"]
        summary.append((title, pct(m["test_accuracy"]), f"{m['test_loss']:.4f}", m["epochs"],
                        f"{m['train_seconds']:.1f} s", f"{np.mean(per_epoch):.1f} s"))
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(f"<p class='headline'>Test accuracy <strong class='acc' data-variant='{name}'>"
                     f"{pct(m['test_accuracy'])}</strong> after {m['epochs']} epochs; training took "
                     f"{m['train_seconds']:.1f} s ({np.mean(per_epoch):.1f} s per epoch).</p>")
        parts.append(gallery([os.path.join(path, f) for f in ("loss.png", "accuracy.png")
                              if os.path.isfile(os.path.join(path, f))]))
        history = read_json(os.path.join(path, "history.json"))
        rows = [(i + 1, f"{history['train_loss'][i]:.4f}", pct(history["train_accuracy"][i]),
                 f"{history['test_loss'][i]:.4f}", pct(history["test_accuracy"][i]), f"{history['seconds'][i]:.1f}")
                for i in range(len(history["train_loss"]))]
        parts.append(table(["epoch", "train loss", "train accuracy", "test loss", "test accuracy", "seconds"], rows))
        parts.append("<h4>Classification report (test set)</h4>"
                     + classification_table(m["classification_report"], config["class_names"]))
        parts.append(gallery([os.path.join(path, f) for f in ("confusion_matrix.png", "samples.png")
                              if os.path.isfile(os.path.join(path, f))]))
    if len(summary) > 1 or os.path.isfile(os.path.join(directory, "comparison.png")):
        parts.append("<h3>BatchNorm against no BatchNorm</h3>")
        parts.append(table(["variant", "test accuracy", "test loss", "epochs", "training time", "per epoch"], summary))
        if os.path.isfile(os.path.join(directory, "comparison.png")):
            parts.append(gallery([os.path.join(directory, "comparison.png")]))
    elif len(runs) == 1:
        parts.append(not_run("the BatchNorm comparison", "npcnn train --compare"))
    return "\n".join(parts)


def section_inside(runs):
    name, path = next(iter(runs.items()))
    parts = [f"<h2 id='inside'>3. Looking inside the net ({esc(VARIANT_TITLES[name])})</h2>"]
    inspect = os.path.join(path, "inspect")
    parts.append("<h3>Filters and feature maps</h3>")
    parts.append(gallery(pngs(inspect)) if pngs(inspect) else not_run("filters and feature maps",
                                                                      f"npcnn inspect {path}"))
    occlusion = os.path.join(path, "occlusion")
    parts.append("<h3>Occlusion</h3>")
    data = os.path.join(occlusion, "occlusion.npz")
    if os.path.isfile(data) and pngs(occlusion):
        o = load_npz(data)
        drops = o["probability"].min(axis=(1, 2))
        patch = "x".join(str(int(v)) for v in np.broadcast_to(o["patch"], (2,)))
        stride = "x".join(str(int(v)) for v in np.broadcast_to(o["stride"], (2,)))
        parts.append(f"<p>A {patch} patch of pixel value {float(o['fill']):g} slid with stride {stride}: "
                     f"the lowest true-class probability per image was "
                     + ", ".join(f"{float(d):.3f}" for d in drops) + ".</p>")
        parts.append(gallery(pngs(occlusion)))
    else:
        parts.append(not_run("the occlusion experiment", f"npcnn occlusion {path}"))
    return "\n".join(parts)


def section_attacks(runs):
    name, path = next(iter(runs.items()))
    folder = os.path.join(path, "attacks")
    parts = [f"<h2 id='attacks'>4. Adversarial examples ({esc(VARIANT_TITLES[name])})</h2>"]

    parts.append("<h3>Class images from noise</h3>")
    f = os.path.join(folder, "class_image.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        probs = d["probabilities"][np.arange(len(d["targets"])), d["targets"]]
        pred = d["probabilities"].argmax(axis=1)
        parts.append(table(["target", "predicted", "probability of target", "final cost (logit)"],
                           [(int(t), int(p), f"{float(q):.4f}", f"{float(c):.2f}")
                            for t, p, q, c in zip(d["targets"], pred, probs, d["cost"][-1])]))
        parts.append(gallery(pngs(folder, "class_image*.png")))
    else:
        parts.append(not_run("class images", f"npcnn attack {path} class-image"))

    parts.append("<h3>Targeted attacks</h3>")
    parts.append(targeted_section(path, folder))

    parts.append("<h3>Learned noise and its transfer</h3>")
    f = os.path.join(folder, "noise.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        parts.append(f"<p>Noise learned for one image of class {int(d['label'])} towards class "
                     f"{int(d['target'])}: that image is now predicted as {int(np.argmax(d['probabilities']))}; "
                     f"added to another image (class {int(d['other_label'])}) it gives "
                     f"{int(np.argmax(d['other_probabilities']))}. Added to every test image, it turns "
                     f"<strong>{pct(d['transfer_rate'])}</strong> of those not of class {int(d['target'])} "
                     f"into that class.</p>")
        parts.append(gallery(pngs(folder, "noise*.png")))
    else:
        parts.append(not_run("learned noise", f"npcnn attack {path} noise"))
    return "\n".join(parts)


def _adam(d):
    lr = float(d["lr"])
    why = "PyTorch's Adam default: the report gives no step size" if np.isclose(lr, 1e-3) else "not the default 1e-3"
    return f"{int(d['steps']):,} Adam steps of {lr:g} ({why}) in {esc(str(d['space']))} space"


def targeted_section(path, folder):
    """The report's setting first (targeted.npz), then the beta sweep beside it (targeted_sweep.npz)."""
    parts, f = [], os.path.join(folder, "targeted.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        success = d["probabilities"].argmax(axis=1) == d["targets"]
        conf = d["probabilities"][np.arange(len(d["targets"])), d["targets"]]
        diff = (d["adversarial"] - d["sources"]).reshape(len(d["targets"]), -1)
        whose = " (the report's)" if np.isclose(float(d["beta"]), 1e-4) else ""
        parts.append(f"<p>Beta {float(d['beta']):g}{whose}, {_adam(d)}. {len(success)} source/target pairs: success "
                     f"rate <strong>{pct(success.mean())}</strong>, mean target probability {conf.mean():.4f}, mean "
                     f"L2 distance {np.linalg.norm(diff, axis=1).mean():.3f}, mean L&infin; distance "
                     f"{np.abs(diff).max(axis=1).mean():.3f} (pixel units).</p>")
        parts.append(gallery([p for p in pngs(folder, "targeted*.png") if "targeted_sweep" not in p]))
    else:
        parts.append(not_run("targeted attacks", f"npcnn attack {path} targeted"))
    parts.append("<h4>Beside it: the penalty's weight beta swept</h4>")
    f = os.path.join(folder, "targeted_sweep.npz")
    if not os.path.isfile(f):
        return "\n".join(parts + [not_run("the beta sweep", f"npcnn attack {path} targeted --beta 0 1e-4 1e-3 1e-2 "
                                                             f"1e-1 1")])
    d = load_npz(f)
    betas, rate, l2, linf = d["betas"], d["success"].mean(axis=1), d["l2"].mean(axis=1), d["linf"].mean(axis=1)
    parts.append(f"<p>{d['targets'].size} pairs ({esc(str(d['pairs']))}), {_adam(d)}, one Adam loop for all betas; "
                 f"distances in pixel units.</p>")
    parts.append(table(["beta", "success rate", "mean target probability", "mean L2", "mean L∞"],
                       [(f"{float(b):g}", pct(r), f"{float(c):.4f}", f"{float(m):.3f}", f"{float(i):.3f}")
                        for b, r, c, m, i in zip(betas, rate, d["confidence"].mean(axis=1), l2, linf)]))
    parts.append(f"<p class='sweep'>{sweep_sentence(betas, l2, rate)}</p>")
    return "\n".join(parts + [gallery(pngs(folder, "targeted_sweep*.png"))])


def sweep_sentence(betas, l2, rate, report_beta=1e-4):
    """One sentence on what the sweep shows, from its arrays: ``l2`` and ``rate`` are the means per beta."""
    ok = rate == 1
    last = float(betas[max(int(np.argmin(ok)) - 1, 0)])   # the end of the betas where every pair succeeds
    kept = ("every pair reaches its target at every beta" if ok.all() else
            f"every pair reaches its target up to beta {last:g}, {pct(rate[-1])} at beta {float(betas[-1]):g}"
            if ok[0] else f"the success rate goes from {pct(rate[0])} to {pct(rate[-1])}")
    text = (f"The closer the image must stay, the less it moves: mean L2 goes from {float(l2[0]):.2f} at beta "
            f"{float(betas[0]):g} to {float(l2[-1]):.2f} at beta {float(betas[-1]):g} ("
            f"{'never rising' if np.all(np.diff(l2) <= 0) else 'not monotone in this run'}), and {kept}")
    at = np.flatnonzero(np.isclose(betas, report_beta, rtol=1e-9, atol=0))
    if len(at) and betas[0] == 0:
        text += (f"; at the report's beta {report_beta:g} it is {float(l2[at[0]]):.2f}, "
                 f"{100 * (l2[at[0]] - l2[0]) / l2[0]:+.1f} % against no penalty")
    return text + "."


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
        parts.append(f"<p>Attack: {esc(str(d['attack']))}; test accuracy against eps (pixel units).</p>")
        parts.append(table(["eps", *variants], rows))
        parts.append(gallery(pngs(os.path.join(path, "attacks"), "robustness*.png")))
    else:
        parts.append(not_run("robustness curves", f"npcnn attack {path} robustness"))

    parts.append("<h3>Speed against PyTorch</h3>")
    bench = _json(os.path.join(directory, "benchmark.json"))
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


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:3px solid #345;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}
table.net td:nth-child(2){text-align:left;font-family:monospace}table.net th:nth-child(2){text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;max-width:100%}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555;text-align:center}
.notrun{background:#fff4e0;border-left:4px solid #e90;padding:.5em 1em;margin:.6em 0}
code{background:#f3f3f3;padding:0 .3em}nav a{margin-right:1em}
"""


def build_report(directory):
    """The report of ``directory`` as an HTML string."""
    runs = find_runs(directory)
    first = read_json(os.path.join(next(iter(runs.values())), "config.json"))
    dataset = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(first.get("dataset"), first.get("dataset"))
    body = [
        f"<h1>npcnn report: a CNN on {esc(dataset)}, trained, inspected and fooled</h1>",
        "<nav><a href='#setup'>setup</a><a href='#training'>training</a><a href='#inside'>looking inside</a>"
        "<a href='#attacks'>adversarial examples</a><a href='#beyond'>beyond the report</a></nav>",
        section_setup(runs),
        section_training(directory, runs),
        section_inside(runs),
        section_attacks(runs),
        section_beyond(directory, runs),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>npcnn report: {esc(dataset)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(directory, out=None):
    """Write ``report.html`` (atomically) into ``directory`` or to ``out``; return its path."""
    page = build_report(directory)
    out = out or os.path.join(directory, "report.html")
    with atomic_path(out, ".html") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
    return out
