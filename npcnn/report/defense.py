"""Section 4b: defending the net. The standard net and the adversarially trained one, side by side."""
import os

import numpy as np

from ..io import load_npz, read_json
from .page import esc, gallery, img, not_run, pct, pngs, table


def section_defense(runs):
    parts = ["<h2 id='defense'>4b. Defending the net</h2>"]
    standard, robust = runs.get("plain") or next(iter(runs.values())), runs.get("adversarial")
    if robust is None:
        parts.append(not_run("adversarial training", "npcnn reproduce (without --no-defend), or npcnn train "
                                                     "--adversarial fgsm --out runs/plain-fgsm"))
        return "\n".join(parts)
    parts.append(_training(robust))
    f = os.path.join(robust, "defense", "defense.npz")
    if os.path.isfile(f):
        parts.append(_table(load_npz(f)))
        parts.append(gallery(pngs(os.path.join(robust, "defense"), "defense_curves.png")))
    else:
        parts.append(not_run("the robustness evaluation",
                             f"npcnn attack {robust} defense --against {standard}"))
    parts.append("<h3>What the robust net's gradients show</h3>")
    parts.append("<p>The same experiments on both nets, with the same settings: on the left the standard net, on "
                 "the right the robust one. A robust net's input gradients look like the digits themselves "
                 "(Tsipras et al. 2019): its class images grow strokes, its saliency sits on the digit, and a "
                 "targeted attack has to draw the target's shape.</p>")
    parts.append(_pairs(standard, robust))
    return "\n".join(parts)


def _training(robust):
    config = read_json(os.path.join(robust, "config.json"))
    method = str(config.get("adversarial", "")).upper()
    schedule = config.get("lr_schedule", "constant")
    steps = config.get("attack_steps") or 1
    size = config.get("attack_step_size") or (1.25 * config["eps"] if method == "FGSM" else 2.5 * config["eps"] / steps)
    lr = f"Adam, lr {config['lr']:g}" + (f" on a {schedule} schedule (0 up to it and back down to 0)"
                                         if schedule != "constant" else "")
    source = ("Wong, Rice &amp; Kolter 2020, \"Fast is better than free\"" if method == "FGSM" else
              "Madry et al. 2018, with the batch size and cyclic learning rate of Wong, Rice &amp; Kolter 2020")
    return (f"<p>The robust net is the reference architecture trained on {method} examples of itself ({source}): "
            f"every batch attacked at L&infin; eps "
            f"{config['eps']:g} with {steps} step(s) of {size:g} from a random start in the eps box, "
            f"{config['epochs']} epochs, batch {config['batch_size']}, {lr}. After every epoch, PGD on a fixed "
            f"batch of training images watches for catastrophic overfitting; the best epoch is kept.</p>")


def _table(d):
    nets, attacks, acc = [str(n) for n in d["nets"]], [str(a) for a in d["attacks"]], np.asarray(d["accuracy"])
    seconds = np.asarray(d["train_seconds"], np.float64)
    rows = [(n, *(pct(a) for a in acc[i]), f"{seconds[i]:.0f} s") for i, n in enumerate(nets)]
    parts = [f"<p>Test accuracy at L&infin; eps {float(d['eps']):g} on {int(d['images']):,} test images; PGD "
             f"takes 50 steps of 0.01 from 10 random starts (an image is robust only if every start fails), APGD "
             f"100 steps with the cross-entropy, then with the DLR loss on what it left (Croce &amp; Hein 2020). "
             f"The curves use one start each, on {int(d['curve_images']):,} images.</p>",
             table(["net", *attacks, "training time"], rows)]
    warnings = [str(w) for w in np.ravel(d["warnings"])]
    if warnings:
        parts.append("<div class='notrun'><strong>signs of gradient masking:</strong> "
                     + "; ".join(esc(w) for w in warnings) + "</div>")
    if "standard" in nets and "robust" in nets:
        s, r = nets.index("standard"), nets.index("robust")
        worst = int(np.argmin(acc[r][1:])) + 1
        parts.append(f"<p class='lesson'>Under the strongest attack here ({esc(attacks[worst])}) the standard net "
                     f"keeps {pct(acc[s][worst])} of the test set and the robust one {pct(acc[r][worst])}, for "
                     f"{100 * (acc[s][0] - acc[r][0]):.2f} points of clean accuracy and "
                     f"{seconds[r] / max(seconds[s], 1e-9):.1f}x the training time"
                     + (". No sign of gradient masking: FGSM is weaker than PGD at every eps, and PGD reaches "
                        "every image at eps 1." if not warnings else ".") + "</p>")
    return "\n".join(parts)


def _pair(title, left, right):
    cells = "".join(img(p, f"{who}: {os.path.basename(p)}") if os.path.isfile(p) else
                    f"<div class='notrun'>{who}: not run</div>" for who, p in (("standard", left), ("robust", right)))
    return f"<h4>{esc(title)}</h4><div class='pair'>{cells}</div>"


def _pairs(standard, robust):
    parts = []
    for title, rel in (("class images from noise (the report's setting)", ("attacks", "class_images.png")),
                       ("saliency maps", ("saliency", "saliency.png"))):
        parts.append(_pair(title, os.path.join(standard, *rel), os.path.join(robust, *rel)))
    parts.append(_pair("targeted attacks (the report's pairs)", os.path.join(standard, "attacks", "targeted_pairs.png"),
                       os.path.join(robust, "attacks", "targeted_pairs.png")))
    f = os.path.join(robust, "attacks", "class_image.npz")
    g = os.path.join(standard, "attacks", "class_image.npz")
    if os.path.isfile(f) and os.path.isfile(g):
        a, b = load_npz(g), load_npz(f)
        if "correlation" in a and "correlation" in b:
            parts.append(f"<p class='lesson'>Correlation of the class images with their class's mean training "
                         f"image: {float(np.nanmean(a['correlation'])):.3f} for the standard net, "
                         f"{float(np.nanmean(b['correlation'])):.3f} for the robust one (same setting, no "
                         f"regulariser).</p>")
    return "\n".join(parts)
