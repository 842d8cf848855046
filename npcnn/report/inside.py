"""Section 3: looking inside the net (filters, feature maps, occlusion)."""
import os

import numpy as np

from ..io import load_npz
from .page import VARIANT_TITLES, esc, gallery, not_run, pngs


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
        if "feature_activation" in o:
            left = o["feature_activation"].min(axis=(1, 2)) / np.maximum(o["feature_base_activation"], 1e-12)
            layer = str(o["feature_layer"]).split(" (")[0]
            parts.append(
                f"<p>The two middle panels are Zeiler &amp; Fergus's (2014, figure 7): the {esc(layer)} map that "
                f"responds most to the unoccluded digit, its total activation as the patch moves, and the map "
                f"projected back to pixels by the deconvnet (every other activation set to zero). Where the "
                f"map goes dark, the patch covers what it detects; at the worst position it kept "
                f"{float(np.median(left)):.0%} of its activation (median over the digits), and the probability "
                f"map shows whether the class needed it.</p>")
        parts.append(gallery(pngs(occlusion)))
    else:
        parts.append(not_run("the occlusion experiment", f"npcnn occlusion {path}"))
    return "\n".join(parts)
