"""Sections 1 and 2: the setup (libraries, hyperparameters, the network) and the training (curves,
classification report, confusion matrix, the BatchNorm comparison)."""
import os

import numpy as np

from ..io import read_json
from .page import VARIANT_TITLES, esc, gallery, not_run, pct, read_json_if_any, table


def section_setup(runs):
    first = next(iter(runs.values()))
    config = read_json(os.path.join(first, "config.json"))
    metrics = read_json_if_any(os.path.join(first, "metrics.json"))
    parts = ["<h2 id='setup'>1. Setup</h2>"]
    versions = config.get("versions", {})
    parts.append("<h3>Libraries</h3>" + table(["library", "version"], sorted(versions.items())))
    keys = ["dataset", "data_source", "epochs", "batch_size", "lr", "seed", "limit"]
    rows = [(k, config.get(k)) for k in keys] + [("optimiser", "Adam"), ("loss", "NLL on log-softmax"),
                                                 ("normalisation", f"mean {config['normalization']['mean']:.4f}, "
                                                                   f"std {config['normalization']['std']:.4f}")]
    parts.append("<h3>Hyperparameters</h3>" + table(["setting", "value"], rows))
    for name, path in runs.items():
        m = read_json_if_any(os.path.join(path, "metrics.json"))
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
        m = read_json_if_any(os.path.join(path, "metrics.json"))
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
        if m.get("adversarial"):
            parts.append(f"<p>{adversarial_sentence(m['adversarial'])}</p>")
        parts.append(gallery([os.path.join(path, f) for f in ("loss.png", "accuracy.png")
                              if os.path.isfile(os.path.join(path, f))]))
        history = read_json(os.path.join(path, "history.json"))
        robust = history.get("robust_accuracy") or []
        rows = [(i + 1, f"{history['train_loss'][i]:.4f}", pct(history["train_accuracy"][i]),
                 f"{history['test_loss'][i]:.4f}", pct(history["test_accuracy"][i]), f"{history['seconds'][i]:.1f}",
                 *([pct(robust[i])] if robust else [])) for i in range(len(history["train_loss"]))]
        parts.append(table(["epoch", "train loss", "train accuracy", "test loss", "test accuracy", "seconds",
                            *(["PGD accuracy (watch batch)"] if robust else [])], rows))
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


def adversarial_sentence(a):
    """What adversarial training did, from metrics.json's ``adversarial`` record."""
    start = "a random start in the eps box" if a["random_start"] else "the clean image"
    text = (f"Trained on adversarial examples of itself: {a['method'].upper()}, eps {a['eps']:g}, {a['steps']} "
            f"step(s) of {a['step_size']:g} from {start}, {100 * a['fraction']:.0f} % of each batch. After every "
            f"epoch a fixed batch of {a['watch_images']} training images was attacked ({a['watch_attack']}); the "
            f"weights kept are epoch {a['best_epoch']}'s, where its accuracy was best "
            f"({pct(a['watch_robust_accuracy'])})")
    if a["catastrophic_overfitting"]:
        text += ", and it later collapsed: catastrophic overfitting (Wong et al. 2020)"
    return text + "."
