"""Section 4's distance to the boundary: how fragile each sample digit is, by DeepFool (L2) and by the
smallest PGD budget (L-inf)."""
import os

import numpy as np
from scipy.stats import spearmanr

from ..io import load_npz
from .page import gallery, not_run, pngs, table


def boundary_section(path, folder):
    f = os.path.join(folder, "boundary.npz")
    if not os.path.isfile(f):
        return not_run("the distance to the boundary", f"npcnn attack {path} boundary")
    d = load_npz(f)
    crossed = d["deepfool_predicted"] != d["labels"]
    parts = [f"<p>DeepFool ({int(d['steps'])} steps, overshoot {float(d['overshoot']):g}, torchattacks' semantics) "
             f"walks each digit to the nearest linearised class boundary; the bisection finds the smallest L&infin; "
             f"budget at which PGD ({int(d['pgd_steps'])} steps of 2.5 eps / steps, random start) changes its class, "
             f"to within {float(d['tol']):g}. Both are upper bounds on the true distance, in pixel units.</p>"]
    rows = [(int(y), f"{float(l2):.3f}", f"-> {int(p)}" if c else f"on the {int(y)}|{int(b)} boundary",
             f"{float(e):.3f}", f"-> {int(q)}")
            for y, l2, c, p, b, e, q in zip(d["labels"], d["deepfool_l2"], crossed, d["deepfool_predicted"],
                                            d["deepfool_boundary_class"], d["pgd_eps"], d["pgd_predicted"])]
    parts.append(table(["digit", "DeepFool L2", "DeepFool ends", "smallest L∞ eps", "PGD's class"], rows))
    parts.append(f"<p class='lesson'>{boundary_sentence(d)}</p>")
    return "\n".join(parts + [gallery(pngs(folder, "boundary*.png"))])


def boundary_sentence(d):
    """One sentence: the most and least fragile digit, whether the two measures agree, DeepFool's stops."""
    y, l2, eps = d["labels"], np.asarray(d["deepfool_l2"], np.float64), np.asarray(d["pgd_eps"], np.float64)
    weak, strong = int(np.argmin(l2)), int(np.argmax(l2))
    text = (f"The most fragile digit is the {int(y[weak])} (L2 {l2[weak]:.2f}, L∞ {eps[weak]:.3f}), the sturdiest "
            f"the {int(y[strong])} (L2 {l2[strong]:.2f}, L∞ {eps[strong]:.3f}): a change of about "
            f"{100 * np.median(eps):.0f} % of the pixel range, spread over the whole image, is enough for the median "
            f"digit")
    finite = np.isfinite(eps)
    if finite.sum() >= 3 and np.ptp(l2[finite]) > 0 and np.ptp(eps[finite]) > 0:
        rho = spearmanr(l2[finite], eps[finite]).statistic
        text += f"; the two measures rank the digits alike (Spearman {rho:.2f})" if rho >= 0.5 else \
            f"; the two measures rank the digits differently (Spearman {rho:.2f})"
    on = int(np.sum(d["deepfool_predicted"] == y))
    if on:
        text += (f". {on} of {len(y)} DeepFool images end on the boundary instead of across it: torchattacks clips "
                 f"to [0, 1] after each overshoot step, and the clip eats the overshoot")
    return text + "."
