"""Section 4: adversarial examples. For each experiment the report's setting first, and the lesson beside it."""
import os

import numpy as np

from ..io import load_npz
from .boundary import boundary_section
from .noise import noise_section
from .page import VARIANT_TITLES, beside, esc, gallery, not_run, pct, pngs, table


def section_attacks(runs):
    name, path = next(iter(runs.items()))
    folder = os.path.join(path, "attacks")
    parts = [f"<h2 id='attacks'>4. Adversarial examples ({esc(VARIANT_TITLES[name])})</h2>"]

    parts.append("<h3>Class images from noise</h3>")
    parts.append(class_images_section(path, folder))

    parts.append("<h3>Targeted attacks</h3>")
    parts.append(targeted_section(path, folder))

    parts.append("<h3>Learned noise and its transfer</h3>")
    parts.append(noise_section(path, folder))

    parts.append("<h3>How far is each digit from the boundary?</h3>")
    parts.append(boundary_section(path, folder))
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
    more, d = beside("the penalty's weight beta swept", os.path.join(folder, "targeted_sweep.npz"), "the beta sweep",
                     f"npcnn attack {path} targeted --beta 0 1e-4 1e-3 1e-2 1e-1 1")
    parts += more
    if d is None:
        return "\n".join(parts)
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


def _class_table(d):
    probs = d["probabilities"][np.arange(len(d["targets"])), d["targets"]]
    others = d["other_correlation"] if "other_correlation" in d else np.full(len(probs), np.nan)
    return table(["target", "predicted", "probability of target", "final cost", "correlation with the class mean",
                  "mean correlation with the other classes' means"],
                 [(int(t), int(p), f"{float(q):.4f}", f"{float(c):.2f}", f"{float(r):.3f}", f"{float(o):.3f}")
                  for t, p, q, c, r, o in zip(d["targets"], d["probabilities"].argmax(axis=1), probs, d["cost"][-1],
                                              d["correlation"], others)])


def class_images_section(path, folder):
    """The report's setting (class_image.npz), then the regularised images beside it."""
    parts, f = [], os.path.join(folder, "class_image.npz")
    if os.path.isfile(f):
        d = load_npz(f)
        report = float(np.nanmean(d["correlation"])) if "correlation" in d else float("nan")
        parts.append(f"<p>The report's setting: {int(d['steps']):,} Adam steps of {float(d['lr']):g} on the logit, "
                     f"in {esc(str(d['space']))} space, unbounded, from uniform noise.</p>")
        if "correlation" in d:
            parts.append(_class_table(d))
        parts.append(gallery(pngs(folder, "class_images.png")))
        singles = [p for p in pngs(folder, "class_image_*.png") if "regularized" not in p]
        if singles:
            parts.append("<details><summary>each class on its own, with its cost curve</summary>"
                         + gallery(singles) + "</details>")
    else:
        report = float("nan")
        parts.append(not_run("class images", f"npcnn attack {path} class-image"))
    more, d = beside("regularised class images", os.path.join(folder, "class_image_regularized.npz"),
                     "regularised class images", f"npcnn attack {path} class-image --regularized")
    parts += more
    if d is None:
        return "\n".join(parts)
    corr = float(np.nanmean(d["correlation"]))
    lo, hi = (float(v) for v in d["start_range"])
    frame = int(d["frame"]) if "frame" in d else 0
    parts.append(f"<p>{int(d['steps']):,} Adam steps of {float(d['lr']):g} in {esc(str(d['space']))} space from "
                 f"noise in [{lo:g}, {hi:g}], bounded to [0, 1], the outer {frame} pixels held at 0 (MNIST digits sit "
                 f"in the central 20x20), an L2 penalty of {float(d['l2']):g}, a blur of {float(d['blur_sigma']):g} px "
                 f"every {int(d['blur_every'])} steps and a random shift of up to {int(d['jitter'])} px each step "
                 f"(Yosinski et al. 2015). A correlation with the class's mean image rewards a dark border whatever "
                 f"the shape, so the table also gives each image's correlation with the other classes' means.</p>")
    parts.append(_class_table(d))
    compare = f", against {report:.3f} for the report's setting" if np.isfinite(report) else ""
    if "other_correlation" in d:
        compare += f"; with the other classes' means {float(np.nanmean(d['other_correlation'])):.3f}"
    parts.append(f"<p class='lesson'>{int(np.sum(d['probabilities'].argmax(axis=1) == d['targets']))} of "
                 f"{d['targets'].size} are predicted as their class; their mean correlation with the class's mean "
                 f"training image is {corr:.3f}{compare}: asking the image to stay a valid, smooth image is what lets "
                 f"a digit's shape appear.</p>")
    return "\n".join(parts + [gallery([os.path.join(folder, "class_images_regularized.png")])])
