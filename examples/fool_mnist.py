"""Fool a trained MNIST net: the report's section 4, from a run folder.

    python examples/train_mnist.py --out runs/plain           # first, a trained net
    python examples/fool_mnist.py runs/plain                  # the report's settings (a few minutes)
    python examples/fool_mnist.py runs/plain --quick          # a tenth of the steps, for a look
    python examples/fool_mnist.py runs/plain --variant runs/batchnorm   # robustness of both nets

Every experiment is the same idea: treat the *image* as the thing to optimise. The image is
wrapped in a Parameter and handed to the same Adam that trained the net (``maximize=True``:
gradient ascent), and its gradient comes from the net's own backward pass::

    clf = Run.open(run_dir).classifier            # net + normalisation, on pixel images [0, 1]
    logits, grad = clf.forward_backward(x, lambda logits: d_objective_d_logits)

The report ran Adam on the *normalised* image ``z = (x - mean) / std`` with no bounds, so that is
the default here too (its step sizes refer to that space); pass ``space="pixel", bounds=(0, 1)``
to keep real images. Figures go to ``RUN_DIR/attacks/``; ``npcnn attack`` does the same from the
command line and also saves every array as ``.npz``.
"""
import argparse
import os

import numpy as np

from npcnn.analysis import attacks as A
from npcnn.io import save_figure
from npcnn.plots import attacks as plots
from npcnn.runs import Run


def main():
    p = argparse.ArgumentParser(description="The report's section 4 on a trained run.")
    p.add_argument("run_dir")
    p.add_argument("--variant", help="another run (e.g. with BatchNorm) for the robustness curve")
    p.add_argument("--quick", action="store_true", help="a tenth of the steps and of the test set")
    args = p.parse_args()
    k = 10 if args.quick else 1
    run = Run.open(args.run_dir)
    clf, names = run.classifier, run.class_names
    out = run.file("attacks")
    images, labels = run.test_data()
    idx, x, y = run.select(images, labels)  # the run's own test digits, one per class

    # 1. "Non-targeted attack": from noise, climb each class's logit (Adam, lr 0.05, 15,000 steps).
    #    What the net calls a perfect "3" looks nothing like a 3.
    r = A.class_images(clf, steps=15_000 // k, lr=0.05)
    save_figure(plots.class_images(r.images, r.history, r.targets, r.probabilities, names),
                os.path.join(out, "class_images.png"))
    print(f"1. class images: probabilities of their class {np.round(r.confidence, 4).tolist()}")

    # 2. Targeted attack: start at a real digit x0 and climb logit_target - beta * ||x - x0||^2
    #    (beta 1e-4, 1,000 steps; the report gives no step size, so Adam's is PyTorch's default, 1e-3, at which
    #    --quick's 100 steps reach few targets). The report's pairs: each digit d -> (d + 1) % 10; then all 90.
    src, tgt = A.target_pairs(y, "all")
    r = A.targeted(clf, x[src], tgt, labels=y[src], beta=1e-4, steps=1_000 // k)
    report = tgt == (y[src] + 1) % 10
    p_clean = clf.predict_proba(x)[src]
    save_figure(plots.targeted_pairs(r.start[report], r.images[report], p_clean[report], r.probabilities[report],
                                     r.labels[report], r.targets[report], names),
                os.path.join(out, "targeted_pairs.png"))
    save_figure(plots.targeted_matrix(r.start, r.images, r.labels, r.targets, r.probabilities, names),
                os.path.join(out, "targeted_matrix.png"))
    s = r.summary()
    print(f"2. targeted: report pairs {np.mean(r.success[report]):.0%} fooled; all 90 pairs "
          f"{s['success_rate']:.1%}, mean confidence {s['mean_confidence']:.3f}, "
          f"mean L2 {s['mean_l2']:.2f}, mean Linf {s['mean_linf']:.2f} (pixel units)")

    # 3. Learned noise: from zero, learn n so that the net calls digit + n an 8 (lr 0.005, 1,500 steps),
    #    then add the same n to another digit, and to the whole test set.
    target = 8
    r = A.learn_noise(clf, x[:1], [target], labels=y[:1], steps=1_500 // k, lr=0.005)
    noise = r.perturbation[0]
    other = A.add_noise(x[1], noise)
    p_other = clf.predict_proba(other[None].astype(np.float32))[0]
    n_test = len(labels) // k
    t = A.transfer_noise(clf, noise, images[:n_test], labels[:n_test], target)
    p0, p1 = clf.predict_proba(x[:2])
    panels = [(p0.argmax(), p0.max()), None, (r.predicted[0], r.probabilities[0].max()),
              (p1.argmax(), p1.max()), (p_other.argmax(), p_other.max())]
    save_figure(plots.noise_experiment(x[0], noise, r.images[0], x[1], other, panels, names),
                os.path.join(out, "noise.png"))
    print(f"3. noise: the {y[0]} + noise is called {r.predicted[0]}; the {y[1]} + the same noise is called "
          f"{p_other.argmax()} ({p_other.max():.3f}); on {n_test:,} test images it turns {t.transfer_rate:.1%} "
          f"into {target}s (accuracy {t.accuracy_clean:.1%} -> {t.accuracy_noisy:.1%})")

    # 4. Beyond the report: FGSM in pixel space, eps in pixel units, for one or two nets.
    eps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    runs = {("batchnorm" if run.config.get("batchnorm") else "plain"): run}
    if args.variant:
        v = Run.open(args.variant)
        runs[("batchnorm" if v.config.get("batchnorm") else "plain") + (" (variant)" if v.config.get(
            "batchnorm") == run.config.get("batchnorm") else "")] = v
    curves = {name: A.robustness_curve(rn.classifier, images[:n_test], labels[:n_test], eps, attack="fgsm",
                                       desc=name).accuracy for name, rn in runs.items()}
    save_figure(plots.robustness(eps, curves, "FGSM"), os.path.join(out, "robustness.png"))
    for name, acc in curves.items():
        print(f"4. FGSM, {name}: " + ", ".join(f"{e:g}: {a:.1%}" for e, a in zip(eps, acc)))
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
