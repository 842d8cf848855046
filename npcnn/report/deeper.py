"""Section 3b: looking deeper (class activation maps; where the net looks, and what each part of it does)."""
import os

import numpy as np

from ..io import load_npz
from .page import VARIANT_TITLES, esc, gallery, not_run, pct


def section_deeper(runs):
    name, path = next(iter(runs.items()))
    parts = [f"<h2 id='deeper'>3b. Looking deeper ({esc(VARIANT_TITLES[name])})</h2>",
             "<h3>Where the net looks: Grad-CAM and guided backpropagation</h3>"]
    parts.append(cam_part(path))
    return "\n".join(parts)


def cam_part(path):
    folder = os.path.join(path, "cam")
    f = os.path.join(folder, "cam.npz")
    if not os.path.isfile(f):
        return not_run("class activation maps", f"npcnn cam {path}")
    d = load_npz(f)
    upsampled, images = np.asarray(d["grad_cam_upsampled"], np.float64), np.asarray(d["images"], np.float64)
    strokes = images > 0.2
    total = upsampled.reshape(len(images), -1).sum(axis=1)
    on = np.where(total > 0, (upsampled * strokes).reshape(len(images), -1).sum(axis=1) / np.maximum(total, 1e-300),
                  np.nan)
    text = (f"<p>Grad-CAM (Selvaraju et al. 2017) at {esc(str(d['layer_described']))}: each channel weighted by the "
            f"mean gradient of the explained class's logit over it, summed, ReLU, upsampled ({esc(str(d['mode']))}). "
            f"Guided backprop passes only positive gradients through each ReLU where its input was positive; "
            f"deconvolution passes positive gradients whatever the input. Both equal Captum's on the same weights."
            f"</p><p class='lesson'>On these {len(images)} digits {pct(np.nanmean(on))} of the Grad-CAM mass lies on "
            f"the strokes, which cover {pct(strokes.mean())} of the image: the net looks at the digit, not at the "
            f"background.</p>")
    pngs = [os.path.join(folder, "cam.png")]
    return text + gallery([p for p in pngs if os.path.isfile(p)])
