"""Conv2d, or Conv2d -> ReLU / Tanh, as one channels-last step: the fast path of every conv that no
2x2 max-pool follows (strided convs, convs before a BatchNorm, ResNet's and LeNet's convs, a VGG
stage's first conv).

Nothing here is new math; it is :class:`~npcnn.nn.Conv2d`'s im2col + GEMM and the activation's own
rule, reordered so that the column matrix never leaves the CPU's cache:

* forward: the input is taken channels last (``xs``, (N, H, W, C): a fast step's output already is;
  anything else is copied so); then, a few images at a time, im2col writes their receptive fields as
  rows (taps in (i, j, c) order, zeros for the taps on the padding) and one GEMM ``rows = cols @ W``
  (W as (kh*kw*C, F)) writes the conv straight into the output, (N*Ho*Wo, F), where the bias and the
  activation are applied in place. The output is returned as an NCHW view of that channels-last
  memory (``out.transpose(0, 3, 1, 2)``): BatchNorm2d, the activations, the residual addition and the
  next fast conv all keep it channels last.
* backward, with ``G = dL/dy`` as rows (N*Ho*Wo, F): ``Ga = G * act'(y)`` (ReLU: ``[y > 0]``, tanh:
  ``1 - y**2``, none: ``G``), then, chunk by chunk, the columns rebuilt from ``xs``:

  - ``dL/dW += cols^T @ Ga``   ((kh*kw*C, F), reordered to the weight's (F, C, kh, kw))
  - ``dL/db += sum of Ga's rows``
  - ``dL/dcols = Ga @ W^T``, scattered back by ``kernels.col2im_nhwc`` onto dL/dx (channels last; the
    taps on the padding dropped); or, for a conv that Winograd takes (below), ``dL/dx`` directly as the
    conv of ``Ga`` with the kernel flipped in both directions and its channels swapped, padded by
    ``k - 1 - p``: ``dL/dx[c, i, j] = sum over f, a, b of Ga[f, i - a + p, j - b + p] * W[f, c, a, b]``
    is that conv, read the other way round.

A 3x3 or 5x5 stride-1 conv with at least :data:`npcnn.fast.winograd.WINOGRAD_MIN_CHANNELS` channels
in and out (a VGG's or a ResNet's inner convs, Madry et al.'s second) computes each chunk's forward by
Winograd's F(2x2, 3x3) or F(2x2, 5x5) instead of im2col + GEMM (:mod:`npcnn.fast.winograd`: 16
multiply-adds per channel pair and four outputs instead of 36, 36 instead of 100) when its forward is
given ``winograd_forward``: in inference, and in training in a net without max-pools
(:func:`npcnn.fast.winograd.forward_may_take_winograd` says why only then); its backward's dL/dx always
(see above).

A conv with few weights per filter (a first layer) takes the direct path instead
(:mod:`npcnn.fast.conv_direct`, :class:`~npcnn.fast.conv_direct.DirectConvPath`).

While npcnn shares out the GEMMs (:func:`npcnn.parallel.sharing`) and there is more than one chunk,
each thread takes a share of the images and walks them chunk by chunk with its own buffers and its
own partial weight gradient (summed at the end). The threads are numba's, running the loop as one
kernel (:mod:`npcnn.kernels.conv_rows`), whenever the kernels can call BLAS themselves
(:func:`npcnn.parallel.kernel_gemm`); else Python's, running the ``body`` below (without numba's JIT,
for one). The sums run in a different order from the readable layers', so the two agree to rounding
(``tests/test_fast_conv_act.py``).
"""
import numpy as np

from .. import kernels, parallel
from ..nn.activation import ReLU
from ..nn.smooth import Tanh
from ..nn.conv import Conv2d
from . import fused, winograd
from .conv_direct import DirectConvPath, _act_code, _activation_grad, channel_stats, direct
from .fused import ScratchBuffers, channels_last
from .norm_act import add_relu

#: The activations folded into the step: their forward applied in place, their derivative from the output.
ACTIVATIONS = (ReLU, Tanh)


def conv_act_length(layers, i):
    """How many layers from ``layers[i]`` a :class:`ConvAct` takes: 2 for Conv2d followed by ReLU or Tanh,
    1 for a Conv2d alone, 0 when ``layers[i]`` is not a Conv2d (subclasses are left alone)."""
    if type(layers[i]) is not Conv2d:
        return 0
    return 2 if i + 1 < len(layers) and type(layers[i + 1]) in ACTIVATIONS else 1


def _batchnorm_args(batchnorm, g):
    """``(bn_y, bn_relu, bn_coef)`` for :func:`npcnn.kernels.conv_rows_backward` from ConvAct.backward's
    ``batchnorm`` (empty coefficients: none), ``g`` the gradient's rows (N*p, F)."""
    if batchnorm is None:
        return g, False, np.empty((0, 0), g.dtype)
    y, relu, coef = batchnorm
    return (y if relu else g), relu, coef


class ConvAct(DirectConvPath, ScratchBuffers):
    """``act(conv(x))`` (or ``conv(x)``) in one channels-last step, with a layer's forward / backward contract.

    ``forward`` returns an NCHW view of channels-last memory. ``backward(grad_out, param_grads=True,
    input_grad=True)`` adds dL/dW and dL/db into the conv's Parameters and returns dL/dx, or None when
    ``input_grad`` is False (the first step of a net in training).
    """

    def __init__(self, conv, act=None):
        if type(conv) is not Conv2d or not (act is None or type(act) in ACTIVATIONS):
            raise TypeError(f"ConvAct needs a Conv2d and optionally a ReLU or Tanh; got {conv!r}, {act!r}")
        self.conv, self.act = conv, act

    def __repr__(self):
        return f"ConvAct({self.conv!r}, {self.act!r})"

    def _plan(self, n):
        """(images per chunk, workers): chunks whose columns take about NHWC_CHUNK_BYTES, shared among
        npcnn's threads when it shares out the GEMMs and there is more than one chunk."""
        step = max(1, fused.NHWC_CHUNK_BYTES // (self._p * self._k * self._itemsize))
        workers = min(parallel.num_threads(), -(-n // step)) if parallel.sharing() else 1
        return step, workers

    @staticmethod
    def _run(n, body, step, workers):
        """``body(first, last, t, serial, step)`` over the images, on ``workers`` threads (see :meth:`_plan`):
        thread ``t`` takes images [first, last) ``step`` at a time, with the serial kernels when shared."""
        if workers == 1:
            body(0, n, 0, False, step)
        else:
            parallel.run_threads(lambda t: body(t * n // workers, (t + 1) * n // workers, t, True, step), workers)

    # ------------------------------------------------------------------ forward
    def forward(self, x, inference=False, winograd_forward=None, batch_stats=False):
        """``inference``: no backward follows; ``winograd_forward``: the conv may take Winograd where it fits
        (None: only in inference; :mod:`npcnn.fast.winograd`). ``batch_stats``: a batch norm follows, and
        :attr:`batch_stats` is then its training statistics of the output, ``(mean, var)`` per channel
        (float64, the variance biased), taken by the kernels while each chunk or image is in cache
        (:func:`channel_stats`), or None where the step could not take them (the chunks on Python's
        threads: the batch norm then takes its own)."""
        self._direct, self._inference, self.batch_stats = direct(self.conv), inference, None
        if self._direct:
            return self._forward_direct(x, batch_stats)
        conv = self.conv
        n, ho, wo = conv._geometry(x)
        c, f = conv.in_channels, conv.out_channels
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        h, w = x.shape[2:]
        # a fast step's output is read in place and kept for backward; a caller's batch is copied
        xs = channels_last(x, self._buffer("xs", (n, h, w, c), x.dtype))
        x3 = xs.reshape(n, h, w * c)            # im2col writes the padding's zeros itself
        self._p, self._k, self._itemsize = ho * wo, kh * kw * c, x.itemsize
        out = np.empty((n * ho * wo, f), dtype=x.dtype)       # new every call: later layers may keep it
        p, k = self._p, self._k
        relu = isinstance(self.act, ReLU)
        bias_relu = conv.bias is not None or relu         # else the GEMM's rows are the output as they are
        run = kernels.run_length(out)                     # the bias over whole rows, as the rows kernels read it
        if conv.bias is not None:
            bias_run = np.tile(conv.bias.data, run // f)
        else:
            bias_run = self._buffer("zero_bias_run", (run,), x.dtype)
            bias_run[...] = 0

        step, workers = self._plan(n)
        wino = winograd.kernel_args(self, conv, x.dtype, workers, min(n, step), ho, wo,   # empty: im2col
                                    inference if winograd_forward is None else winograd_forward)
        # the GEMM's weights as (kh*kw*C, F); left unset (unread) when Winograd computes the conv
        w_mat = (np.empty((k, f), x.dtype) if wino[0].size
                 else np.ascontiguousarray(conv.weight.data.transpose(2, 3, 1, 0)).reshape(k, f))

        def body(first, last, t, serial, step):
            mm = np.matmul if serial else parallel.matmul
            im2col = kernels.im2col_nhwc.serial if serial else kernels.im2col_nhwc
            for a in range(first, last, step):
                b = min(last, a + step)
                rows = out[a * p:b * p]
                if wino[0].size:
                    winograd.conv_rows(wino, t, x3, a, b, c, ph, pw, ho, wo, rows)
                else:
                    chunk_cols = self._buffer(f"cols{t}", (min(last - first, step) * p, k), x.dtype)[:(b - a) * p]
                    im2col(x3[a:b], c, kh, kw, sh, sw, ph, pw, ho, wo, chunk_cols)
                    mm(chunk_cols, w_mat, out=rows)
                if bias_relu:
                    (kernels.bias_relu_rows.serial if serial else kernels.bias_relu_rows)(rows, bias_run, relu)

        gemm = parallel.kernel_gemm(x.dtype)
        if gemm is None:
            self._run(n, body, step, workers)
            if isinstance(self.act, Tanh):
                kernels.tanh_inplace(out)
        else:                                   # the same loop, on numba's threads (kernels.conv_rows)
            cols_all = self._buffer("cols_all", (workers, 0 if wino[0].size else min(n, step) * p, k), x.dtype)
            sums_all = np.zeros((workers, 2, bias_run.size) if batch_stats else (0, 2, 0))
            kernels.conv_rows_forward(*gemm, x3, c, kh, kw, sh, sw, ph, pw, ho, wo, w_mat, bias_relu, bias_run,
                                      _act_code(self.act), cols_all, step, out, *wino, sums_all)
            if batch_stats:
                self.batch_stats = channel_stats(sums_all, f, len(out))
        self._x_shape, self._x3, self._out, self._hw = x.shape, x3, out, (ho, wo)
        return out.reshape(n, ho, wo, f).transpose(0, 3, 1, 2)

    # ------------------------------------------------------------------ backward
    def takes_batchnorm_backward(self, dtype):
        """True if :meth:`backward` can take ``batchnorm`` now: the conv has no activation, and its chunks run
        in :func:`npcnn.kernels.conv_rows_backward` (not the direct path, nor Python's threads)."""
        return self.act is None and not self._direct and parallel.kernel_gemm(dtype) is not None

    def backward(self, grad_out, param_grads=True, input_grad=True, batchnorm=None, add_to=None):
        """dL/dx (None unless ``input_grad``); dL/dW and dL/db into the conv's Parameters (if ``param_grads``).
        ``batchnorm = (y, relu, coef)``: a batch norm follows the conv (:class:`npcnn.fast.ConvBatchNorm`),
        ``grad_out`` is the gradient at its output ``y`` (after its ReLU if ``relu``), and each chunk's gradient
        at the conv's output is the batch norm's dL/dx, from ``coef`` (its
        ``BatchNorm2d._backward(..., coefficients=True)``); only where :meth:`takes_batchnorm_backward`.
        ``add_to``: an array of the input's shape to which dL/dx is added, in place, and which is returned (a
        residual block's other gradient): col2im scatters onto it directly where it can (a channels-last
        ``add_to``, the kernels' path without Winograd), instead of zeroing an array of its own."""
        if batchnorm is not None and not self.takes_batchnorm_backward(grad_out.dtype):
            raise RuntimeError(f"{self!r}: the batch norm's backward cannot be taken in this conv's kernel here")
        if getattr(self, "_inference", False):
            raise RuntimeError("ConvAct.backward after forward(x, inference=True): run forward(x) for a backward")
        if not (param_grads or input_grad):
            return None
        if self._direct:
            return _added(add_to, self._backward_direct(grad_out, param_grads, input_grad))
        conv, x3, y = self.conv, self._x3, self._out
        n, c, h, w = self._x_shape
        f = conv.out_channels
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        (ho, wo), p, k = self._hw, self._p, self._k
        dtype = x3.dtype
        g = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(n * p, f)
        step, workers = self._plan(n)
        dw = np.zeros((workers, k, f), dtype=dtype) if param_grads else None
        db = np.zeros((workers, f), dtype=dtype) if param_grads and conv.bias is not None else None
        ones = np.ones(step * p, dtype=dtype) if db is not None else None   # db = ones @ Ga, a GEMV
        # dL/dx as a conv of Ga by Winograd where it fits (u empty: GEMM + col2im); dL/dW likewise (a_mat empty:
        # im2col + GEMM)
        wino = winograd.input_grad_args(self, conv, dtype, workers, min(n, step), h, w, input_grad)
        wgrad = winograd.weight_grad_args(self, conv, dtype, workers, min(n, step), ho, wo, param_grads)
        # W^T as (F, K), for dL/dcols; left unset (unread) when Winograd computes dL/dx
        w_t = (np.empty((f, k), dtype) if wino[0].size or not input_grad
               else np.ascontiguousarray(conv.weight.data.transpose(0, 2, 3, 1)).reshape(f, k))
        gemm = parallel.kernel_gemm(dtype)
        # col2im zeroes each image's plane of dx3, or adds onto add_to's (channels-last) memory
        onto = (None if add_to is None or wino[0].size or gemm is None or not input_grad
                or add_to.shape != (n, c, h, w) or add_to.dtype != dtype else _nhwc_planes(add_to))
        dx3 = onto if onto is not None else np.empty((n, h, w * c), dtype=dtype) if input_grad else None

        def body(first, last, t, serial, step):
            rows = min(last - first, step) * p
            ga_buf = self._buffer(f"ga{t}", (rows, f), dtype) if self.act is not None else None
            cols = self._buffer(f"cols{t}", (rows, k), dtype) if param_grads else None
            dcols = self._buffer(f"dcols{t}", (rows, k), dtype) if input_grad else None
            mm = np.matmul if serial else parallel.matmul
            im2col = kernels.im2col_nhwc.serial if serial else kernels.im2col_nhwc
            col2im = kernels.col2im_nhwc.serial if serial else kernels.col2im_nhwc
            for a in range(first, last, step):
                b = min(last, a + step)
                m = (b - a) * p
                ga = _activation_grad(self.act, g[a * p:b * p], y[a * p:b * p],
                                      None if ga_buf is None else ga_buf[:m], serial)
                if param_grads and wgrad[1].size:
                    winograd.weight_grad_chunk(wgrad, t, x3, ga.reshape(b - a, ho, wo * f), a, b, c, ph, pw, ho, wo)
                elif param_grads:
                    im2col(x3[a:b], c, kh, kw, sh, sw, ph, pw, ho, wo, cols[:m])
                    dw[t] += mm(cols[:m].T, ga)
                if db is not None:
                    db[t] += ones[:m] @ ga
                if input_grad and wino[0].size:
                    winograd.conv_rows(wino, t, ga.reshape(b - a, ho, wo * f), 0, b - a, f, kh - 1 - ph, kw - 1 - pw,
                                       h, w, dx3[a:b].reshape(-1, c))
                elif input_grad:
                    mm(ga, w_t, out=dcols[:m])
                    col2im(dcols[:m], c, kh, kw, sh, sw, ph, pw, ho, wo, dx3[a:b])

        if gemm is None:
            self._run(n, body, step, workers)
        else:                                   # the same loop, on numba's threads (kernels.conv_rows)
            rows = min(n, step) * p
            kernels.conv_rows_backward(
                *gemm, x3, c, kh, kw, sh, sw, ph, pw, ho, wo, g, y, _act_code(self.act), w_t,
                param_grads, input_grad, self._buffer("ga_all", (workers, rows, f), dtype),
                self._buffer("cols_all", (workers, rows, k), dtype), step,
                dw if param_grads else np.zeros((workers, k, f), dtype), db is not None,
                db if db is not None else np.zeros((workers, f), dtype),
                dx3 if input_grad else np.empty((0, 0, 0), dtype), onto is not None, *wino, *wgrad,
                *_batchnorm_args(batchnorm, g))
        if param_grads and wgrad[1].size:
            conv.weight.accumulate(np.ascontiguousarray(winograd.weight_grad(wgrad[-1], kh)), owned=True)
        elif param_grads:
            conv.weight.accumulate(dw.sum(axis=0).T.reshape(f, kh, kw, c).transpose(0, 3, 1, 2), owned=False)
        if db is not None:
            conv.bias.accumulate(db.sum(axis=0), owned=True)
        if not input_grad:
            return None
        if onto is not None:
            return add_to
        return _added(add_to, dx3.reshape(n, h, w, c).transpose(0, 3, 1, 2))     # channels last, as an NCHW view


def _nhwc_planes(a):
    """``a`` (N, C, H, W), an NCHW view of C-contiguous channels-last memory, as that memory's (N, H, W*C)
    planes (a view); None for any other layout or a read-only ``a``."""
    nhwc = a.transpose(0, 2, 3, 1)
    if not (nhwc.flags.c_contiguous and a.flags.writeable):
        return None
    return nhwc.reshape(a.shape[0], a.shape[2], -1)


def _added(add_to, dx):
    """``dx``, or ``add_to += dx`` and ``add_to`` when it is given (the path that could not scatter onto it)."""
    return dx if add_to is None or dx is None else add_relu(add_to, dx, False, out=add_to)
