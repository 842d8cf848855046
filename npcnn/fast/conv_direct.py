"""The direct path of :class:`npcnn.fast.ConvAct`: a conv with few weights per filter (a first layer),
computed from the NCHW input into a channels-last output without im2col.

A conv with at most :data:`DIRECT_MAX_TAPS` weights per filter (a first layer: 1x3x3, 1x5x5, 3x3x3)
and at most :data:`DIRECT_MAX_FILTERS` filters (the first convs of LeNet-5, Wong et al.'s net and the
small ResNet) is computed directly instead, from
the NCHW input into a channels-last output (``kernels.direct_conv_act_to_nhwc`` and its two gradients,
:mod:`npcnn.kernels.direct_conv_rows`): a GEMM that is only a few columns wide runs far below BLAS's
speed, and im2col of so few taps is a pass over memory. (With 32 filters the GEMM path, its chunks on
numba's threads, was as fast or faster: a 3x32x3x3 conv at 32x32, batch 64, 6.3 ms forward and 14.1
backward against the direct 6.1 and 16.8 on a 2-core AMD EPYC; with 16 filters the direct path won,
Wong et al.'s 1x16x4x4 stride-2 conv 0.52 + 1.13 ms against 1.69 + 1.96, the ResNet's 1x16x3x3 stem
0.91 + 2.72 against 1.62 + 3.25.) A
strided conv goes there as a stride-1 conv over the input's phase planes (:func:`to_phases`: the
sh*sw sub-images ``x[:, c, u::sh, v::sw]`` become channels, and the kernel is cut the same way), so
a 1x4x4 stride-2 conv is a 4x2x2 stride-1 conv.

With at least :data:`WIDE_GEMM_MIN_FILTERS` filters, and where npcnn's kernels call BLAS themselves, the
forward and the weight gradient run instead as one GEMM per chunk of images on "wide" columns, copied
rather than gathered (:mod:`npcnn.kernels.direct_conv_gemm`); the input gradient stays the direct loops'.
"""
import numpy as np

from .. import kernels, parallel
from ..nn.activation import ReLU
from ..nn.smooth import Tanh
from . import fused

#: Convs with at most this many weights per filter (C*kh*kw, counted on the phase planes) are computed directly.
DIRECT_MAX_TAPS = 27

#: ... and at most this many filters.
DIRECT_MAX_FILTERS = 16

#: The direct path's convs with at least this many filters run as GEMMs on wide columns (measured on a 2-core AMD
#: EPYC Zen 4, 2 threads: Wong et al.'s 1x16x4x4 stride-2 first conv at batch 1000 1.82 -> 1.39 ms; the small
#: ResNet's 1x16x3x3 stem at batch 64 0.39 -> 0.26 ms forward, 0.52 -> 0.26 its weight gradient; but LeNet-5's
#: 1x6x5x5 first conv 5.8 -> 7.3 ms at batch 1000: BLAS runs a GEMM 6 columns wide at half its speed).
WIDE_GEMM_MIN_FILTERS = 16


def direct(conv):
    """True when ``conv`` takes the direct path: at most DIRECT_MAX_FILTERS filters and DIRECT_MAX_TAPS
    weights per filter, counted on
    the phase planes a strided conv is run on (C*sh*sw channels of ceil(kh/sh) x ceil(kw/sw) taps)."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    return (conv.in_channels * sh * sw * -(-kh // sh) * -(-kw // sw) <= DIRECT_MAX_TAPS
            and conv.out_channels <= DIRECT_MAX_FILTERS)


def to_phases(a, sh, sw):
    """``a`` (N, C, H, W), H and W multiples of the stride, as its sh*sw phase planes (N, C*sh*sw, H/sh, W/sw):
    plane ``(c, u, v)`` holds ``a[:, c, u::sh, v::sw]``. A stride-(sh, sw) conv over ``a`` is a stride-1
    conv over the planes, with the kernel's phases as its channels. Stride 1: ``a`` itself."""
    if (sh, sw) == (1, 1):
        return a
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(n, c, h // sh, sh, w // sw, sw).transpose(0, 1, 3, 5, 2, 4)).reshape(
        n, c * sh * sw, h // sh, w // sw)


def from_phases(q, sh, sw):
    """The inverse of :func:`to_phases`: (N, C*sh*sw, Hq, Wq) back to (N, C, Hq*sh, Wq*sw)."""
    if (sh, sw) == (1, 1):
        return q
    n, cq, hq, wq = q.shape
    c = cq // (sh * sw)
    return q.reshape(n, c, sh, sw, hq, wq).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, hq * sh, wq * sw)


def channel_stats(sums_all, channels, count):
    """``(mean, var)`` per channel (float64, the variance biased) from the threads' sums of ``count`` rows
    ``sums_all`` (workers, 2, run), as :func:`npcnn.kernels.conv_rows_forward` takes them: ``mean = S / m``,
    ``var = Q / m - mean**2`` with ``S`` and ``Q`` the sums of the values and of their squares. One pass
    instead of the batch norm's two (mean, then squared deviations); in float64 the cancellation in ``var``
    costs about ``(mean**2 / var) * 1e-16`` of it, far below float32's rounding unless the mean is ~10^4
    standard deviations from 0. The small ResNet's training step at batch 64 (2-core AMD EPYC Zen 4): its 9
    statistics passes took 0.8 ms, the sums in the conv kernels add 0.2-0.3; the step 2 % faster (median of
    8 interleaved runs)."""
    totals = sums_all.reshape(sums_all.shape[0], 2, -1, channels).sum(axis=(0, 2))
    mean = totals[0] / count
    return mean, np.maximum(totals[1] / count - mean * mean, 0.0)


def _kernel_padded(weight, kh, kw):
    """``weight`` (F, C, kh0, kw0) with zero taps added up to (kh, kw) (a multiple of the stride)."""
    f, c, kh0, kw0 = weight.shape
    if (kh0, kw0) == (kh, kw):
        return weight
    out = np.zeros((f, c, kh, kw), dtype=weight.dtype)
    out[:, :, :kh0, :kw0] = weight
    return out


def _act_code(act):
    """The activation as the kernels code it (:mod:`npcnn.kernels.rows`)."""
    rows = kernels.rows
    return rows.RELU if isinstance(act, ReLU) else rows.TANH if isinstance(act, Tanh) else rows.NONE


def _activation_grad(act, g, y, out, serial=False):
    """``g * act'(pre-activation)``, from the output ``y``, into ``out`` (``g`` itself without an activation)."""
    if act is None:
        return g
    (kernels.act_grad.serial if serial else kernels.act_grad)(g, y, _act_code(act), out)
    return out


class DirectConvPath:
    """The direct path's forward and backward, mixed into :class:`npcnn.fast.ConvAct` (its ``conv``, ``act``
    and scratch buffers)."""

    def _forward_direct(self, x, batch_stats):
        conv = self.conv
        n, ho, wo = conv._geometry(x)
        c, f, (ph, pw) = conv.in_channels, conv.out_channels, conv.padding
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        kqh, kqw = -(-kh // sh), -(-kw // sw)                # the phase planes' kernel
        hb, wb = (ho + kqh - 1) * sh, (wo + kqw - 1) * sw      # the padded input as the phases read it
        # the input zero-padded to (hb, wb) and cut into its phase planes (to_phases), in one pass
        xq = self._buffer("xq", (n, c * sh * sw, hb // sh, wb // sw), x.dtype)
        kernels.pad_to_phases(x, ph, pw, sh, sw, xq)
        wq = to_phases(_kernel_padded(conv.weight.data, kqh * sh, kqw * sw), sh, sw)
        bias = conv.bias.data if conv.bias is not None else np.zeros(f, dtype=x.dtype)
        out_nhwc = np.empty((n, ho, wo, f), dtype=x.dtype)
        run = kernels.run_length(out_nhwc.reshape(-1, f)[:ho * wo])              # whole rows, within an image
        gemm = self._wide_gemm(x.dtype)
        workers = min(n, parallel.num_threads()) if gemm is not None or batch_stats else 0
        sums_all = np.zeros((workers, 2, run) if batch_stats else (0, 2, 0))
        if gemm is not None:                    # one GEMM per chunk on wide columns (kernels.direct_conv_gemm)
            w_kf = np.ascontiguousarray(wq.reshape(f, -1).T)
            step, cols_all, wide_all = self._wide_scratch(workers, n, w_kf.shape[0], ho * xq.shape[3], f, x.dtype)
            kernels.direct_conv_gemm_to_nhwc(*gemm, xq, w_kf, np.tile(bias, wo), _act_code(self.act), kqh, kqw,
                                             out_nhwc, cols_all, wide_all, step, sums_all)
        else:
            kernels.direct_conv_act_to_nhwc(xq, wq, bias, _act_code(self.act), kqh, kqw, out_nhwc, sums_all)
        if batch_stats:
            self.batch_stats = channel_stats(sums_all, f, n * ho * wo)
        out = out_nhwc.transpose(0, 3, 1, 2)                   # channels last, as the GEMM path's
        self._x_shape, self._xq, self._wq, self._out = x.shape, xq, wq, out
        return out

    def _backward_direct(self, grad_out, param_grads, input_grad):
        conv, xq, wq = self.conv, self._xq, self._wq
        n, c, h, w = self._x_shape
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        g = np.ascontiguousarray(grad_out.transpose(0, 2, 3, 1))          # as the output's memory: NHWC
        y = self._out.transpose(0, 2, 3, 1)
        gemm = self._wide_gemm(g.dtype)
        if param_grads and gemm is not None:
            self._weight_grad_wide(gemm, g, y)
            param_grads = False
        if not (param_grads or input_grad):
            return None
        ga = _activation_grad(self.act, g, y, None if self.act is None else np.empty_like(g))
        ga = ga.transpose(0, 3, 1, 2)          # an NCHW view: the kernels spread one (n, f) plane at a time
        if param_grads:
            blocks = min(n, parallel.num_threads())
            dw_part = np.empty((blocks, *wq.shape), dtype=g.dtype)
            db_part = np.empty((blocks, conv.out_channels), dtype=g.dtype)
            kernels.direct_conv_weight_grad_nchw(ga, xq, *wq.shape[2:], dw_part, db_part)
            conv.weight.accumulate(from_phases(dw_part.sum(axis=0), sh, sw)[:, :, :kh, :kw], owned=False)
            if conv.bias is not None:
                conv.bias.accumulate(db_part.sum(axis=0), owned=True)
        if not input_grad:
            return None
        dxq = self._buffer("dxq", xq.shape, xq.dtype)
        kernels.direct_conv_input_grad_nchw(ga, wq, *wq.shape[2:], dxq)
        dxpad = from_phases(dxq, sh, sw)
        dx = np.zeros(self._x_shape, dtype=g.dtype)
        rows, cols = min(h, dxpad.shape[2] - ph), min(w, dxpad.shape[3] - pw)
        dx[:, :, :rows, :cols] = dxpad[:, :, ph:ph + rows, pw:pw + cols]
        return dx

    def _wide_gemm(self, dtype):
        """The kernels' GEMM (:func:`npcnn.parallel.kernel_gemm`) when the direct path's conv and weight gradient
        run as GEMMs on wide columns (:mod:`npcnn.kernels.direct_conv_gemm`): with at least
        :data:`WIDE_GEMM_MIN_FILTERS` filters; else None (the direct loops)."""
        return parallel.kernel_gemm(dtype) if self.conv.out_channels >= WIDE_GEMM_MIN_FILTERS else None

    def _wide_scratch(self, workers, n, taps, plane, f, dtype):
        """``(step, cols_all, wide_all)`` for :mod:`npcnn.kernels.direct_conv_gemm`: images per chunk (their
        wide columns and output about 2 * NHWC_CHUNK_BYTES) and the ``workers`` threads' scratch, kept on the
        step."""
        per_image = plane * (taps + f) * np.dtype(dtype).itemsize
        step = max(1, min(-(-n // workers), 2 * fused.NHWC_CHUNK_BYTES // per_image))
        return (step, self._buffer("wide_cols", (workers, taps, step * plane), dtype),
                self._buffer("wide_out", (workers, step * plane, f), dtype))

    def _weight_grad_wide(self, gemm, g, y):
        """dL/dW and dL/db of the direct path's conv by :func:`npcnn.kernels.direct_conv_gemm_weight_grad`,
        into the conv's Parameters; ``g`` and ``y`` (N, Ho, Wo, F) channels last."""
        conv, xq, wq = self.conv, self._xq, self._wq
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        n, ho, wo, f = g.shape
        workers = min(n, parallel.num_threads())
        taps = wq.shape[1] * wq.shape[2] * wq.shape[3]
        step, cols_all, wide_all = self._wide_scratch(workers, n, taps, ho * xq.shape[3], f, g.dtype)
        dw_part = np.zeros((workers, taps, f), dtype=g.dtype)
        db_part = np.zeros((workers, wo * f), dtype=g.dtype)
        kernels.direct_conv_gemm_weight_grad(*gemm, xq, g, y, _act_code(self.act), *wq.shape[2:], cols_all, wide_all,
                                            step, dw_part, db_part)
        dw = dw_part.sum(axis=0).T.reshape(wq.shape)
        conv.weight.accumulate(from_phases(dw, sh, sw)[:, :, :kh, :kw], owned=False)
        if conv.bias is not None:
            conv.bias.accumulate(db_part.sum(axis=0).reshape(wo, f).sum(axis=0), owned=True)
