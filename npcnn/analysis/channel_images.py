"""What each conv channel detects, by activation maximisation: the input that drives a channel hardest.

Erhan et al. 2009; Yosinski et al. 2015 (regularised); lucid's ``objectives.channel``: maximise the mean
activation of one channel of a layer (after its ReLU) over the input image, with Adam. The loop is the class
images' own (:func:`npcnn.analysis.attacks.class_images`, with its regularisers: bounds [0, 1], an L2
penalty, periodic blur, jitter), run on a :class:`ChannelProbe`: the net cut after the layer, whose
"logits" are the channels' mean activations. Its gradient:

    d mean_hw(a_c) / d a = 1 / (h w) on channel c, 0 elsewhere,

backpropagated through the layers below by their own backward passes (parameter gradients skipped).
"""
from dataclasses import dataclass

import numpy as np

from ..nn import Sequential
from .attacks import class_images
from .cam import resolve_layer


#: the set that works for channels (measured on the report's net, full MNIST: every conv2 channel's image
#: drives it 2.3x to 5x harder than its best test image): the class images' regularised set without the L2
#: penalty (a channel's mean activation is ~1, a logit ~20: the same penalty would black the image out)
#: and from U(0, 1) noise (from faint noise most channels start dead after their ReLU, with no gradient)
CHANNEL = {"steps": 300, "lr": 0.05, "space": "pixel", "bounds": (0.0, 1.0), "start": (0.0, 1.0), "score": "logit",
           "l2": 0.0, "blur_every": 2, "blur_sigma": 0.5, "jitter": 1}


class ChannelProbe:
    """The classifier's net cut after ``layer``; ``forward_backward`` gives each channel's mean activation
    [N, C] as the "logits", so any loop written for a Classifier's logits maximises channels instead."""

    def __init__(self, classifier, layer):
        self.index, self.description = resolve_layer(classifier, layer, where="visualize_channels")
        self.net = Sequential(*classifier.body.layers[:self.index + 1])
        self.classifier, self.normalization, self.dtype = classifier, classifier.normalization, classifier.dtype
        self.class_names = None
        self.num_classes = self.net.forward(np.zeros((1, 1, 28, 28), self.dtype)).shape[1]

    def normalize(self, x):
        return self.classifier.normalize(x)

    def activations(self, x, batch_size=1000):
        """Each channel's mean activation [N, C] for pixel images [N, 1, H, W] (or [N, H, W]; uint8 allowed)."""
        x = np.asarray(x)
        x = x.astype(self.dtype) / self.dtype.type(255) if x.dtype == np.uint8 else x.astype(self.dtype)
        x = x[:, None] if x.ndim == 3 else x
        self.classifier.model.eval()
        return np.concatenate([self.net.forward(self.normalize(x[i:i + batch_size])).mean(axis=(2, 3))
                               for i in range(0, len(x), batch_size)])

    def forward_backward(self, x, grad_fn):
        self.classifier.model.eval()
        a = self.net.forward(self.normalize(x))
        means = a.mean(axis=(2, 3))
        g = np.asarray(grad_fn(means), dtype=self.dtype)
        grad_a = np.broadcast_to((g / self.dtype.type(a.shape[2] * a.shape[3]))[:, :, None, None], a.shape)
        dz = self.net.backward(np.ascontiguousarray(grad_a), param_grads=False)
        return means, (dz / self.dtype.type(self.normalization.std)).reshape(x.shape)

    def predict_proba(self, x):
        """Not probabilities: the channels' mean activations (what the loop's result records)."""
        return self.activations(x)


@dataclass
class ChannelImages:
    """The image that drives each channel hardest; activations are channel means after the layer's ReLU."""

    layer: str
    channels: np.ndarray      # [K]
    images: np.ndarray        # [K, H, W] pixel space
    activation: np.ndarray    # [K] each image's own channel's mean activation
    history: np.ndarray       # [steps, K] the objective at each step
    best_test: np.ndarray     # [K] the largest mean activation of that channel over the test images given
    settings: dict

    @property
    def ratio(self):
        """activation / best_test: above 1 when the image drives its channel harder than every test image."""
        return self.activation / np.where(self.best_test > 0, self.best_test, np.nan)


def visualize_channels(classifier, layer="last", channels=None, *, test_images=None, seed=0, progress=True,
                       **settings):
    """For each of ``channels`` (default: all) of conv ``layer``, the input that maximises its mean activation,
    with :data:`CHANNEL` (300 Adam steps of 0.05 in pixel space from U(0, 1) noise, bounded to [0, 1], blur
    of 0.5 pixels every 2 steps, jitter 1 pixel; any of them can be overridden). ``test_images`` (uint8 or
    pixel): the channel's best over them, for the ratio.
    Returns :class:`ChannelImages`."""
    probe = ChannelProbe(classifier, layer)
    n = probe.num_classes
    channels = np.arange(n) if channels is None else np.atleast_1d(np.asarray(channels))
    if channels.size == 0 or channels.dtype.kind not in "iu" or channels.min() < 0 or channels.max() >= n:
        raise ValueError(f"visualize_channels: channels must be in 0..{n - 1} for {layer}, got {channels.tolist()}")
    kwargs = {**CHANNEL, "seed": seed, "progress": progress, **settings}
    r = class_images(probe, channels, **kwargs)
    best = (probe.activations(test_images)[:, channels].max(axis=0) if test_images is not None
            else np.full(len(channels), np.nan))
    activation = probe.activations(r.images)[np.arange(len(channels)), channels]
    return ChannelImages(layer=probe.description, channels=channels, images=r.images, activation=activation,
                         history=r.history, best_test=best, settings=r.settings)
