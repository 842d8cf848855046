"""A trained net plus its input normalisation, seen from pixel space.

People reason about images as pixels in [0, 1], black = 0. The net was
trained on normalised inputs ``z = (x - mean) / std``. A :class:`Classifier`
hides that: every method takes pixel-space images ``x`` of shape
[N, H, W] or [N, 1, H, W], and :meth:`input_gradient` applies the chain rule
through the normalisation (``dL/dx = dL/dz / std``).
"""
import numpy as np

from . import fast
from .nn import LogSoftmax, Sequential


class Classifier:
    """Wraps a Sequential that ends in LogSoftmax; always runs it in eval mode.

    The *logits* are the outputs of the layer before the LogSoftmax (the
    report's "cost" maximises one of them).
    """

    def __init__(self, model, normalization, class_names=None, batch_size=1000):
        if not isinstance(model, Sequential) or not isinstance(model[-1], LogSoftmax):
            raise TypeError("Classifier needs a Sequential that ends in LogSoftmax")
        self.model = model.eval()
        self.body = Sequential(*model.layers[:-1])  # the same layer objects, minus the LogSoftmax
        self.normalization = normalization
        self.dtype = model.parameters()[0].dtype
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = int(batch_size)

    @property
    def num_classes(self):
        return self.model[-2].out_features

    def _as_input(self, x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"Classifier: expected images of shape [N, H, W] or [N, 1, H, W], got {np.shape(x)}")
        if x.dtype.kind not in "fui":
            raise TypeError(f"Classifier: expected pixel values in [0, 1], got dtype {x.dtype}")
        return x

    def normalize(self, x):
        """Pixel space [N, 1, H, W] -> the net's input space, in the model's dtype."""
        return self.normalization.to_normalized(x.astype(self.dtype, copy=False)).astype(self.dtype, copy=False)

    def _net(self):
        """The body on the fast path (:func:`npcnn.fast.plan`), kept: its fused steps keep their buffers."""
        plan = getattr(self, "_plan", None)
        if plan is None or plan.model is not self.body or plan.fuse != fast.FUSE:
            self._plan = fast.plan(self.body)
        return self._plan

    def logits(self, x):
        """Pre-softmax outputs [N, C] for pixel-space images, in batches."""
        self.model.eval()
        x = self._as_input(x)
        net = self._net()
        outs = [net.forward(self.normalize(x[i:i + self.batch_size]), inference=True)
                for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs) if outs else np.empty((0, self.num_classes), self.dtype)

    def predict_proba(self, x):
        """Class probabilities [N, C] (softmax of the logits)."""
        return softmax(self.logits(x))

    def predict(self, x):
        """Predicted classes [N]."""
        return self.logits(x).argmax(axis=1)

    def forward_backward(self, x, grad_fn):
        """Logits of one batch and the pixel-space gradient of ``sum(grad_fn(logits) * logits)``.

        ``grad_fn(logits) -> dL/dlogits``; only the input gradient is computed
        (parameter gradients skipped). The attacks' inner loop is this call.
        """
        self.model.eval()
        x = self._as_input(x)
        net = self._net()
        logits = net.forward(self.normalize(x))
        grad_logits = np.asarray(grad_fn(logits), dtype=self.dtype)
        dz = net.backward(grad_logits, param_grads=False)
        return logits, (dz / self.dtype.type(self.normalization.std)).reshape(x.shape)

    def input_gradient(self, x, grad_logits):
        """d/dx of ``sum(grad_logits * logits(x))`` for pixel-space ``x``; parameter gradients skipped."""
        shape = np.shape(x)
        x = self._as_input(x)
        grad_logits = np.asarray(grad_logits)
        if grad_logits.shape != (len(x), self.num_classes):
            raise ValueError(f"input_gradient: grad_logits must have shape {(len(x), self.num_classes)}, "
                             f"got {grad_logits.shape}")
        out = np.empty(x.shape, dtype=self.dtype)
        for i in range(0, len(x), self.batch_size):
            sl = slice(i, i + self.batch_size)
            out[sl] = self.forward_backward(x[sl], lambda _: grad_logits[sl])[1]
        return out.reshape(shape)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_classifier(path):
    """The classifier stored in a ``model.npz`` written by training (or a run folder holding one)."""
    import os

    from .models import load_model

    if os.path.isdir(path):
        path = os.path.join(path, "model.npz")
    model, normalization, info = load_model(path)
    clf = Classifier(model, normalization, class_names=info["class_names"])
    clf.info = info
    return clf
