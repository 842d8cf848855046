"""Section 3b: looking deeper (class activation maps; where the net looks, and what each part of it does)."""
import glob
import os

import numpy as np

from ..io import load_npz
from .page import VARIANT_TITLES, esc, gallery, not_run, pct


def section_deeper(runs):
    name, path = next(iter(runs.items()))
    parts = [f"<h2 id='deeper'>3b. Looking deeper ({esc(VARIANT_TITLES[name])})</h2>",
             "<h3>Where the net looks: Grad-CAM and guided backpropagation</h3>"]
    parts.append(cam_part(path))
    folder = os.path.join(path, "deeper")
    parts.append("<h3>The test set as the net sees it</h3>")
    parts.append(embedding_part(path, folder))
    layer = _layer(folder, "ablation")
    parts.append(f"<h3>Which channels matter: each {esc(layer)} channel zeroed</h3>")
    parts.append(ablation_part(path, folder, layer))
    layer = _layer(folder, "top")
    parts.append(f"<h3>What each {esc(layer)} channel detects: the test patches it likes best</h3>")
    parts.append(examples_part(path, folder, layer))
    layer = _layer(folder, "channels")
    parts.append(f"<h3>What each {esc(layer)} channel detects: the input it likes best</h3>")
    parts.append(channels_part(path, folder, layer))
    return "\n".join(parts)


def _layer(folder, prefix):
    """The conv layer a stage of this folder ran on (``<prefix>_<layer>.npz``): conv2 (the reference net's)
    when it is there, else the last name written (a zoo net's last conv layer or block); conv2 if none."""
    files = glob.glob(os.path.join(folder, f"{prefix}_*.npz"))
    found = sorted(os.path.basename(f)[len(prefix) + 1:-len(".npz")] for f in files)
    return "conv2" if "conv2" in found or not found else found[-1]


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


def embedding_part(path, folder):
    f = os.path.join(folder, "embedding_tsne.npz")
    if not os.path.isfile(f):
        return not_run("the map of the test set", f"npcnn embedding {path} --limit 2000")
    d = load_npz(f)
    wrong = int(np.sum(d["labels"] != d["predicted"]))
    return (f"<p>t-SNE (perplexity {float(d['perplexity']):g}, PCA initialisation, {int(d['max_iter']):,} "
            f"iterations) of the {int(d['features'])} units of the last hidden layer for {d['labels'].size:,} test "
            f"images, coloured by their true class; the {wrong} misclassified ones marked.</p>"
            f"<p class='lesson'>In this map a digit's {int(d['knn_k'])} nearest neighbours share its class "
            f"{pct(d['knn_accuracy'])} of the time: by the last hidden layer the classes are separate clusters, "
            f"and the last Linear layer only has to draw lines between them.</p>"
            + gallery([os.path.join(folder, "embedding_tsne.png")]))


def ablation_part(path, folder, layer="conv2"):
    f = os.path.join(folder, f"ablation_{layer}.npz")
    if not os.path.isfile(f):
        return not_run("the channel ablation", f"npcnn ablation {path}")
    d = load_npz(f)
    drop = np.asarray(d["drop"], np.float64)
    order = np.argsort(-drop, kind="stable")
    top = ", ".join(f"channel {int(d['channels'][i])} ({100 * drop[i]:.2f} points)" for i in order[:3])
    worst_class = np.unravel_index(np.argmax(d["class_drop"]), d["class_drop"].shape)
    return (f"<p>Each of the {drop.size} channels of {esc(layer)} set to zero in turn (Captum's LayerFeatureAblation with "
            f"a zero baseline), on {d['labels'].size:,} test images; accuracy with every channel: "
            f"{pct(d['base_accuracy'])}.</p><p class='lesson'>"
            f"{'No single channel is vital' if drop.max() < 0.02 else 'Some channels matter more than others'}: the "
            f"largest drops are {top}, and {int(np.sum(drop <= 0))} channels can go at no cost. The largest drop for "
            f"one class is "
            f"{100 * float(d['class_drop'][worst_class]):.1f} points (channel {int(d['channels'][worst_class[0]])} "
            f"on class {int(worst_class[1])}).</p>"
            + gallery([os.path.join(folder, f"ablation_{layer}.png")]))


def examples_part(path, folder, layer="conv2"):
    f = os.path.join(folder, f"top_{layer}.npz")
    if not os.path.isfile(f):
        return not_run("the dataset examples", f"npcnn examples {path}")
    d = load_npz(f)
    size = "x".join(str(int(v)) for v in d["rf_size"])
    return (f"<p>For each {esc(layer)} channel, the {int(d['k'])} places in the test set where it fires most (after "
            f"its activation), shown as the {size} input patch that unit sees (Zeiler &amp; Fergus 2014). Where the report saw "
            f"3x3x32 weight boxes it could not read, these patches show which strokes make each channel fire.</p>"
            + gallery([os.path.join(folder, f"top_{layer}.png")]))


def channels_part(path, folder, layer="conv2"):
    f = os.path.join(folder, f"channels_{layer}.npz")
    if not os.path.isfile(f):
        return not_run("the channel images", f"npcnn channels {path}")
    d = load_npz(f)
    ratio = np.asarray(d["ratio"], np.float64)
    return (f"<p>For each {esc(layer)} channel, the image in [0, 1] that maximises its mean activation (after "
            f"the activation that follows the layer): "
            f"{int(d['steps'])} Adam steps of {float(d['lr']):g} from uniform noise, blurred "
            f"({float(d['blur_sigma']):g} px) every 2 steps and shifted by up to {int(d['jitter'])} px each step (Yosinski et al. 2015).</p>"
            f"<p class='lesson'>{int(np.sum(ratio > 1))} of {ratio.size} images drive their channel harder than "
            f"every test image does ({ratio.min():.1f} to {ratio.max():.1f} times the best test image's mean "
            f"activation): what a channel likes is a texture of the strokes it detects, repeated over the whole "
            f"image, not a digit.</p>" + gallery([os.path.join(folder, f"channels_{layer}.png")]))
