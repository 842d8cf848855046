"""Batch normalisation, per channel."""
import numpy as np

from .. import kernels
from .module import Module, Parameter, check_dtype, check_input


class _BatchNorm(Module):
    r"""Batch normalisation over every axis but the channel axis 1.

    Forward (training): per channel, ``mu`` and biased ``var`` over the
    batch (and spatial) axes, ``xhat = (x - mu) / sqrt(var + eps)``,
    ``y = gamma * xhat + beta``. The running statistics follow PyTorch:
    ``running = (1 - momentum) * running + momentum * batch``, with the
    *unbiased* batch variance (``var * m / (m - 1)``) going into
    ``running_var``; ``momentum=None`` means a cumulative average.
    In eval mode the running statistics replace the batch ones.

    Backward, with ``m`` values per channel and sums over them:

    * ``dL/dbeta = sum(g)``, ``dL/dgamma = sum(g * xhat)``
    * training: ``dL/dx = gamma / sqrt(var + eps) / m *
      (m * g - sum(g) - xhat * sum(g * xhat))`` (mu and var depend on x)
    * eval: ``dL/dx = g * gamma / sqrt(running_var + eps)`` (they do not)

    A 4-d input whose memory is channels last (an NCHW view of (N, H, W, C) memory, as a fused
    conv step returns) is processed as (N*H*W, C) rows and its output, and gradient, are returned
    as the same kind of view; any other input is processed as a contiguous (N, C, H*W) array.
    Backward recomputes ``xhat`` from the forward's input rather than storing it, so that input must
    not be modified in between (PyTorch's autograd asks the same).
    """

    _buffers = ("running_mean", "running_var", "num_batches_tracked")
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype=np.float32, rng=None):
        self.num_features = int(num_features)
        if self.num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got {num_features}")
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)
        self.num_batches_tracked = np.array(0, dtype=np.int64)
        self._dtype = np.dtype(dtype)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _channel_view(self, a):
        """View a (N, C, ...) array as (N, C, rest) so every reduction is over axes (0, 2)."""
        return a.reshape(a.shape[0], a.shape[1], -1)

    @staticmethod
    def _rows_view(a):
        """``a`` (N, C, H, W) as (N*H*W, C) rows when its memory is channels last (the output of a
        fused conv step is such a view), else None."""
        if a.ndim != 4 or a.flags.c_contiguous:
            return None
        nhwc = a.transpose(0, 2, 3, 1)
        return nhwc.reshape(-1, a.shape[1]) if nhwc.flags.c_contiguous else None

    def forward(self, x):
        return self._forward(x, relu=False)

    def _forward(self, x, relu, stats=None, normalize=True):
        """:meth:`forward`, followed by ``max(., 0)`` in the same pass when ``relu`` (the fast path's
        :class:`~npcnn.fast.BatchNormReLU`, whose backward is :meth:`_backward` with ``relu``). ``stats``: the
        batch's ``(mean, biased variance)`` per channel (float64) when training, if the caller has them
        (the fast conv step before it takes them while it writes ``x``); None: computed here.
        ``normalize=False`` (a channels-last ``x``, no ``relu``): the statistics are taken and kept for
        :meth:`_backward` as usual, but nothing is computed from them and None is returned; the caller
        applies them (a fast residual block, in the pass of its sum: :meth:`_affine`)."""
        if not normalize and (relu or self._rows_view(x) is None):
            raise ValueError(f"{self!r}: only a channels-last input without a ReLU can be left unnormalised")
        check_input(self, x, self._ndims, self.num_features)
        check_dtype(self, x, self._dtype)
        rows = self._rows_view(x)                     # channels-last input: kept channels last
        self._channels_last = rows is not None
        x3 = rows if self._channels_last else np.ascontiguousarray(self._channel_view(x))
        m = x3.size // self.num_features
        if self.training:
            if m <= 1:
                raise ValueError(
                    f"{self!r}: expected more than 1 value per channel when training, got input shape {x.shape}"
                )
            mean = np.empty(self.num_features, dtype=np.float64)
            var = np.empty(self.num_features, dtype=np.float64)
            if stats is not None:
                mean[...], var[...] = stats
            elif self._channels_last:
                kernels.batchnorm_stats_rows(x3, mean, var, kernels.run_length(x3))
            else:
                kernels.batchnorm_stats(x3, mean, var)
            self._update_running(mean, var, m)
        else:
            mean, var = self.running_mean, self.running_var
        # what backward needs: the input (not modified by anyone) and the statistics, to recompute xhat
        self._x3, self._mean = x3, mean.astype(x.dtype)
        self._invstd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        self._batch_stats = self.training
        self._y3 = None
        if not normalize:
            return None
        if self._channels_last:                       # an NCHW view of channels-last memory, like x
            return self._normalized(x, relu)
        y = np.empty_like(x3)
        self._y3 = y if relu else None                # the ReLU's output: its derivative is [y > 0]
        kernels.batchnorm_apply(x3, self._mean, self._invstd, *self._affine(x.dtype), relu, y)
        return y.reshape(x.shape)

    def _normalized(self, x, relu=False):
        """``bn(x)`` (then ``max(., 0)`` if ``relu``) for a channels-last ``x``, with the statistics the last
        :meth:`_forward` kept (also one with ``normalize=False``), as the same kind of NCHW view."""
        x3 = self._rows_view(x)
        y = np.empty_like(x3)
        if relu:
            self._y3 = y                              # the ReLU's output: its derivative is [y > 0]
        kernels.batchnorm_apply_rows(x3, self._mean, self._invstd, *self._affine(x.dtype), relu, y,
                                     kernels.run_length(x3))
        n, c, h, w = x.shape
        return y.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    def _affine(self, dtype):
        """``(gamma, beta)``, ones and zeros when the layer has none."""
        if self.affine:
            return self.weight.data, self.bias.data
        return np.ones(self.num_features, dtype), np.zeros(self.num_features, dtype)

    def _update_running(self, mean, var, m):
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean *= 1 - momentum
        self.running_mean += momentum * mean
        self.running_var *= 1 - momentum
        self.running_var += momentum * var * (m / (m - 1))

    def backward(self, grad_out, param_grads=True):
        return self._backward(grad_out, param_grads, relu=False)

    def _backward(self, grad_out, param_grads, relu, coefficients=False):
        """:meth:`backward`; with ``relu`` (after ``_forward(x, relu=True)``) ``grad_out`` is the gradient
        after the ReLU, and ``grad_out * [y > 0]`` is taken in the same pass. With ``coefficients`` (after a
        channels-last forward) only the first pass runs, ``sum(g)`` and ``sum(g * xhat)``, and the
        coefficients of dL/dx are returned instead of it,
        :func:`npcnn.kernels.normalization.batchnorm_dx_coefficients` (5, run), for a conv step before the
        batch norm that computes dL/dx chunk by chunk (:class:`npcnn.fast.ConvBatchNorm`)."""
        if relu and self._y3 is None:
            raise RuntimeError(f"{self!r}: a backward through the ReLU needs a forward with it")
        if coefficients and not self._channels_last:
            raise RuntimeError(f"{self!r}: the coefficients of dL/dx need a channels-last forward")
        scale = (self._invstd * (self.weight.data if self.affine else 1)).astype(grad_out.dtype)
        sum_g = np.empty(self.num_features, dtype=np.float64)
        sum_gx = np.empty(self.num_features, dtype=np.float64)
        if self._channels_last:                       # the gradient in the forward's layout (a copy if it is not)
            n, c, h, w = grad_out.shape
            g = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(-1, c)
            run = kernels.run_length(g)
            dx = np.empty((0, c) if coefficients else g.shape, dtype=g.dtype)     # empty: the sums alone
            kernels.batchnorm_backward_rows(g, self._x3, self._y3 if relu else g, relu, self._mean, self._invstd, scale,
                                            self._batch_stats, sum_g, sum_gx, dx, run)
            dx = None if coefficients else dx.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        else:
            g = np.ascontiguousarray(self._channel_view(grad_out))
            dx = np.empty_like(g)
            kernels.batchnorm_backward(g, self._x3, self._y3 if relu else g, relu, self._mean, self._invstd, scale,
                                       self._batch_stats, sum_g, sum_gx, dx)
            dx = dx.reshape(grad_out.shape)
        if self.affine and param_grads:
            self.weight.accumulate(sum_gx.astype(g.dtype), owned=True)
            self.bias.accumulate(sum_g.astype(g.dtype), owned=True)
        if coefficients:
            return kernels.normalization.batchnorm_dx_coefficients(self._mean, self._invstd, scale, sum_g, sum_gx,
                                                                   len(g), self._batch_stats, run, g.dtype)
        return dx


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel C (see :class:`_BatchNorm`)."""

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs, per feature C (see :class:`_BatchNorm`)."""

    _ndims = (2, 3)
