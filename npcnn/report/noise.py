"""Section 4's learned noise: one noise per digit with the report's setting first, then its step size swept."""
import os

import numpy as np

from ..io import load_npz
from .page import beside, esc, gallery, img, not_run, pct, pngs, table


def noise_section(path, folder):
    """The report's setting (noise.npz: one noise per digit), then the sweep beside it (noise_sweep.npz)."""
    parts, f = [], os.path.join(folder, "noise.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        own = d["probabilities"].argmax(axis=1)
        other = d["other_probabilities"].argmax(axis=1)
        rule = "each digit d to (d + 1) % 10" if str(d["target_rule"]) == "next" else "every digit to one class"
        parts.append(f"<p>One noise per digit ({rule}), {int(d['steps']):,} Adam steps of {float(d['lr']):g} "
                     f"(the report's) in {esc(str(d['space']))} space, from zero; each noise is then added to another "
                     f"random test image and to all {int(d['transfer_images']):,} test images. Test accuracy without "
                     f"noise: {pct(d['accuracy_clean'])}.</p>")
        parts.append(table(
            ["digit", "target", "digit + noise", "noise L2", "other image", "other + noise", "transfer rate",
             "test accuracy with the noise"],
            [(int(y), int(t), int(p), f"{float(n):.2f}", int(yo), int(po), pct(r), pct(a)) for y, t, p, n, yo, po, r, a
             in zip(d["labels"], d["targets"], own, d["noise_l2"], d["other_labels"], other, d["transfer_rate"],
                    d["accuracy_noisy"])]))
        parts.append(f"<p class='lesson'>{noise_sentence(d)}</p>")
        parts.append(gallery([os.path.join(folder, "noise.png")]))
        singles = pngs(folder, "noise_*_to_*.png")
        if singles:
            parts.append("<details><summary>each digit's noise on its own (the report's figures 81-90)</summary>"
                         + gallery(singles) + "</details>")
    else:
        parts.append(not_run("learned noise", f"npcnn attack {path} noise"))
    more, d = beside("the noise's size swept", os.path.join(folder, "noise_sweep.npz"), "the noise sweep",
                     f"npcnn attack {path} noise --lr 0.0005 0.001 0.002 0.005 0.01")
    parts += more
    if d is None:
        return "\n".join(parts)
    parts.append(f"<p>The same {d['labels'].size} digits and targets, {int(d['steps']):,} Adam steps at each step "
                 f"size; transfer on {int(d['transfer_images']):,} test images. Means over the noises.</p>")
    parts.append(table(["lr", "noise L2", "own digit fooled", "transfer rate", "test accuracy with the noise"],
                       [(f"{float(lr):g}" + (" (the report's)" if np.isclose(lr, d["report_lr"]) else ""),
                         f"{float(n):.2f}", pct(s), pct(t), pct(a)) for lr, n, s, t, a in
                        zip(d["lrs"], d["mean_noise_l2"], d["mean_success_rate"], d["mean_transfer_rate"],
                            d["mean_accuracy_noisy"])]))
    parts.append(f"<p class='lesson'>{noise_sweep_sentence(d)}</p>")
    return "\n".join(parts + [img(os.path.join(folder, p)) for p in ("noise_sweep.png", "noise_sweep_digits.png")
                              if os.path.isfile(os.path.join(folder, p))])


def noise_sentence(d):
    """One sentence on the per-digit noises, from noise.npz's arrays."""
    k = d["labels"].size
    own = int(np.sum(d["probabilities"].argmax(axis=1) == d["targets"]))
    other = int(np.sum(d["other_probabilities"].argmax(axis=1) == d["targets"]))
    rate = np.asarray(d["transfer_rate"], dtype=np.float64)
    verdict = ("so at this size a noise learned on one digit is a universal one: it fools almost every image"
               if rate.min() > 0.9 else
               "so most images keep their class: the noise is specific to the digit it was learned on"
               if rate.max() < 0.5 else "so some noises carry over to other images and others do not")
    return (f"{own} of {k} digits reach their target and {other} of {k} other images do; on the test set the "
            f"noises turn {pct(rate.min())} to {pct(rate.max())} of the images into their target (mean "
            f"{pct(rate.mean())}), {verdict}.")


def noise_sweep_sentence(d):
    """One sentence on what the sweep shows: where the transfer starts, and where the report's step size sits."""
    lrs, l2 = np.asarray(d["lrs"], np.float64), np.asarray(d["mean_noise_l2"], np.float64)
    rate, own = np.asarray(d["mean_transfer_rate"], np.float64), np.asarray(d["mean_success_rate"], np.float64)
    text = (f"The step size sets the noise's size: mean L2 {l2[0]:.1f} at lr {lrs[0]:g} and {l2[-1]:.1f} at lr "
            f"{lrs[-1]:g}; the transfer rate goes from {pct(rate[0])} to {pct(rate[-1])}")
    low = np.flatnonzero((rate < 0.5) & (own >= 0.9))
    if len(low):
        i = int(low[-1])
        text += (f". Up to lr {lrs[i]:g} (L2 {l2[i]:.1f}) the noise fools {pct(own[i])} of its own digits but fewer "
                 f"than half of the other images: the report's \"it predicted the correct classes most of the time\"")
    at = np.flatnonzero(np.isclose(lrs, float(d["report_lr"])))
    if len(at):
        i = int(at[0])
        text += f"; at the report's lr {lrs[i]:g} (L2 {l2[i]:.1f}) it is {pct(rate[i])}"
    return text + "."
