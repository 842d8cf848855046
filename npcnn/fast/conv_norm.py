"""Conv2d -> BatchNorm2d (-> ReLU), a ResNet's pattern, on the fast path; in eval mode the batch norm
is folded into the conv.

In training the batch norm normalises with the batch's own statistics, which exist only once the
conv has run: the step is a :class:`~npcnn.fast.conv_act.ConvAct` over the conv, then the batch norm
(with the ReLU in its pass, as :class:`~npcnn.fast.norm_act.BatchNormReLU`). The conv's kernels sum
its output and squares while each chunk is in cache (``ConvAct.forward(..., batch_stats=True)``), so
the batch norm reads its mean and variance from them instead of two passes of its own. Backward, the
batch norm takes its two sums (one pass), and the conv's kernel computes the batch norm's dL/dx, its
own ``Ga``, a chunk at a time from them (``ConvAct.backward(..., batchnorm=...)``): dL/dx of the batch
norm is never written out and read back. In eval mode it is a fixed affine map
per output channel, ``bn(z) = s * (z - mean) + beta`` with ``s = gamma / sqrt(running_var + eps)``, and
so is a conv's bias: the two fold into one conv,

    W' = s * W  (each filter scaled),   b' = s * (b - mean) + beta,

run by one ConvAct with the ReLU, which saves the batch norm's pass over the conv's output (a third
of the small ResNet's eval time at batch 1000 went to its batch norms). Backward in eval mode runs
the folded conv's backward (dL/dx is the same function's gradient), and the chain rule through the
fold gives the Parameters' gradients from the folded ones ``dW'`` and ``db'``:

* ``dL/dW = s * dW'``, ``dL/db = s * db'`` (the conv's bias, if it has one);
* ``dL/dbeta = db'``, ``dL/dgamma = (sum over a filter of dW' * W + db' * (b - mean)) / sqrt(running_var + eps)``
  (which is ``sum of g * xhat``, the batch norm's own rule).

The folded conv's sums are taken in another order than the two layers', so the two paths agree to
rounding (``tests/test_fast_conv_norm.py``).
"""
import numpy as np

from ..nn.activation import ReLU
from ..nn.conv import Conv2d
from ..nn.norm import BatchNorm2d
from .conv_act import ConvAct


def conv_norm_length(layers, i):
    """3 for Conv2d -> BatchNorm2d -> ReLU, 2 for Conv2d -> BatchNorm2d, else 0 (exact types only)."""
    if type(layers[i]) is not Conv2d or i + 1 >= len(layers) or type(layers[i + 1]) is not BatchNorm2d:
        return 0
    return 3 if i + 2 < len(layers) and type(layers[i + 2]) is ReLU else 2


class ConvBatchNorm:
    """``relu(bn(conv(x)))`` (or ``bn(conv(x))``) with a fast conv step's forward / backward contract: the
    two (three) layers in training, one folded conv in eval mode (see the module's docstring)."""

    def __init__(self, conv, bn, relu=None):
        if conv_norm_length([conv, bn] + ([relu] if relu is not None else []), 0) != 2 + (relu is not None):
            raise TypeError(f"ConvBatchNorm needs a Conv2d, a BatchNorm2d and optionally a ReLU; got {conv!r}, "
                            f"{bn!r}, {relu!r}")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"ConvBatchNorm: {bn!r} does not fit the {conv.out_channels} channels of {conv!r}")
        self.conv, self.bn, self.relu = conv, bn, relu
        self._conv_step = ConvAct(conv)
        (kh, kw), stride, padding = conv.kernel_size, conv.stride, conv.padding
        self._folded_conv = Conv2d(conv.in_channels, conv.out_channels, (kh, kw), stride=stride, padding=padding,
                                   bias=True, dtype=conv.weight.dtype, rng=0)
        self._folded = ConvAct(self._folded_conv, relu)

    def __repr__(self):
        return f"ConvBatchNorm({self.conv!r}, {self.bn!r}, {self.relu!r})"

    def _fold(self):
        """Write W' and b' into the folded conv; keep what backward needs."""
        conv, bn = self.conv, self.bn
        invstd = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
        gamma = bn.weight.data.astype(np.float64) if bn.affine else 1.0
        beta = bn.bias.data.astype(np.float64) if bn.affine else 0.0
        s = gamma * invstd
        b = conv.bias.data.astype(np.float64) if conv.bias is not None else 0.0
        centred_bias = b - bn.running_mean.astype(np.float64)
        self._folded_conv.weight.data[...] = conv.weight.data * s[:, None, None, None]
        self._folded_conv.bias.data[...] = s * centred_bias + beta
        self._s, self._invstd, self._centred_bias = s, invstd, centred_bias

    def forward(self, x, inference=False, winograd_forward=None):
        """``inference``: no backward follows; ``winograd_forward``: the conv may take Winograd (None: only in
        inference; :mod:`npcnn.fast.winograd`)."""
        return self._forward(x, inference, winograd_forward, defer=False)[0]

    def forward_deferred(self, x, inference=False, winograd_forward=None):
        """``(z, bn)``: in training, for a channels-last conv output and no ReLU after the batch norm, the conv's
        output ``z`` with the batch norm's statistics taken and kept for :meth:`backward`, but the batch norm
        itself left for the caller to apply (``bn``, in its own pass: a residual block's sum,
        :func:`npcnn.fast.residual.residual_sum`); else ``(forward(x), None)``."""
        return self._forward(x, inference, winograd_forward, defer=True)

    def _forward(self, x, inference, winograd_forward, defer):
        self._eval = not self.bn.training
        if self._eval:
            self._fold()
            return self._folded.forward(x, inference, winograd_forward), None
        # the conv step takes the batch's statistics in its pass over each chunk, where it can (else None)
        y = self._conv_step.forward(x, inference, winograd_forward, batch_stats=True)
        stats = self._conv_step.batch_stats
        if defer and self.relu is None and self.bn._rows_view(y) is not None:
            self.bn._forward(y, False, stats=stats, normalize=False)
            return y, self.bn
        return self.bn._forward(y, self.relu is not None, stats=stats), None

    def backward(self, grad_out, param_grads=True, input_grad=True, add_to=None):
        """dL/dx (None unless ``input_grad``), the Parameters' gradients added; ``add_to``: dL/dx is added to it,
        in place, and it is returned (:meth:`ConvAct.backward`)."""
        if not self._eval:
            step, relu = self._conv_step, self.relu is not None
            if step.takes_batchnorm_backward(grad_out.dtype) and self.bn._channels_last:
                # the batch norm's sums here, its dL/dx in the conv's kernel, a chunk at a time (ConvAct.backward)
                coef = self.bn._backward(grad_out, param_grads, relu, coefficients=True)
                return step.backward(grad_out, param_grads, input_grad, batchnorm=(self.bn._y3, relu, coef),
                                     add_to=add_to)
            return step.backward(self.bn._backward(grad_out, param_grads, relu), param_grads, input_grad,
                                 add_to=add_to)
        folded = self._folded_conv
        folded.zero_grad()
        dx = self._folded.backward(grad_out, param_grads, input_grad, add_to=add_to)
        if param_grads:
            conv, bn, s = self.conv, self.bn, self._s
            dw, db = folded.weight.grad.astype(np.float64), folded.bias.grad.astype(np.float64)
            dtype = conv.weight.dtype
            conv.weight.accumulate((dw * s[:, None, None, None]).astype(dtype), owned=True)
            if conv.bias is not None:
                conv.bias.accumulate((db * s).astype(dtype), owned=True)
            if bn.affine:
                dgamma = ((dw * conv.weight.data).sum(axis=(1, 2, 3)) + db * self._centred_bias) * self._invstd
                bn.weight.accumulate(dgamma.astype(dtype), owned=True)
                bn.bias.accumulate(db.astype(dtype), owned=True)
        return dx
