"""Where the net looks: Grad-CAM, guided backprop, guided Grad-CAM and deconvolution of the run's digits.

One stage, on the run's chosen test images (``samples.json``: one per class; ``indices=`` picks others),
writing its folder whole or not at all (:func:`~npcnn.experiments.common.output_folder`)::

    RUN_DIR/cam/   cam.png (every image, a row each), cam_test<i>.png (one per image), cam.npz (last)

Every setting is checked before anything is computed or written.
"""
from dataclasses import dataclass

import numpy as np

from ..analysis.cam import Explanation, explain, resolve_layer
from ..classifier import softmax
from ..plots import cam as plots
from .common import StageOutput, chosen_images, open_run, output_folder

#: guided Grad-CAM's upsampling here: the paper's, and the same map as the Grad-CAM column
MODE = "bilinear"


@dataclass
class CamOutput(StageOutput):
    indices: np.ndarray = None      # test-set indices of the images [N]
    labels: np.ndarray = None       # their true classes [N]
    targets: np.ndarray = None      # the classes explained [N]
    predicted: np.ndarray = None    # the net's classes [N]
    layer: str = ""                 # Grad-CAM's activation, in words
    target: int = None              # the setting: one class for every image, or None (each its prediction)
    maps: Explanation = None        # grad_cam (coarse / upsampled / scaled / weights), the three input maps

    def describe(self):
        what = "its predicted class" if self.target is None else f"class {self.target}"
        same = int(np.sum(self.targets == self.labels))
        return (f"Grad-CAM at {self.layer}, guided backprop, guided Grad-CAM and deconvolution of "
                f"{len(self.indices)} image(s), each explaining {what} ({same} of them the true class); "
                f"written to {self.folder}")


def _check_target(target, n):
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < n:
        raise ValueError(f"--target must be a class number 0..{n - 1} (or none: the predicted class), "
                         f"got {target!r}")
    return int(target)


def cam(run, *, layer="last", target=None, indices=None, progress=True):
    """Grad-CAM at ``layer`` ("last": the last conv layer or block, conv2 in the reference net; "conv1",
    "conv2", "block1", ...; or an index into the net's layers: that module's output;
    see :func:`npcnn.analysis.cam.cam_layers`), guided backprop, guided Grad-CAM (bilinear, as the
    paper) and deconvolution of the run's digits (or of the test images ``indices``), each explaining
    class ``target`` (None: the class the net predicts for that image). ``progress`` is accepted so that
    every stage takes it (nothing here is slow). Returns a :class:`CamOutput`."""
    run = open_run(run)
    clf = run.classifier
    names = clf.class_names
    target = _check_target(target, clf.num_classes)
    index, described = resolve_layer(clf, layer, "cam")
    idx, x, y = chosen_images(run, indices)
    e = explain(clf, x, target, layer=index, mode=MODE)
    g = e.grad_cam
    predicted = e.logits.argmax(axis=1)
    probability = softmax(e.logits)[np.arange(len(x)), g.target]
    maps = {"guided backprop": e.guided_backprop, "guided Grad-CAM": e.guided_grad_cam,
            "deconvolution": e.deconvolution}
    with output_folder(run, "cam") as out:
        out.figure(plots.cam(x, g.scaled, maps, g.target, names, labels=y, probability=probability, layer=described,
                             titles=[f"test {i}" for i in idx]), "cam.png")
        for k, i in enumerate(idx):
            one = slice(k, k + 1)
            out.figure(plots.cam(x[one], g.scaled[one], {m: v[one] for m, v in maps.items()}, g.target[one], names,
                                 labels=y[one], probability=probability[one], layer=described,
                                 title=f"test image {i}: Grad-CAM at {described}, and the guided gradients"),
                       f"cam_test{i}.png")
        out.npz("cam.npz", {
            "images": x, "labels": y, "indices": idx, "targets": g.target, "predicted": predicted,
            "probability": probability, "grad_cam": g.coarse, "grad_cam_upsampled": g.upsampled,
            "grad_cam_scaled": g.scaled, "grad_cam_weights": g.weights, "guided_backprop": e.guided_backprop,
            "guided_grad_cam": e.guided_grad_cam, "deconvolution": e.deconvolution,
            "layer": np.array(str(layer)), "layer_index": np.array(index), "layer_described": np.array(described),
            "target": np.array(-1 if target is None else target), "mode": np.array(MODE),
            "class_names": np.array(names),
        })
    return CamOutput(folder=out.final, files=out.files, indices=idx, labels=y, targets=g.target,
                     predicted=predicted, layer=described, target=target, maps=e)
