"""A 3x3 stride-1 conv by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016): the channels-last conv steps' alternative to im2col + GEMM.

The output is cut into 2x2 tiles; tile ``(i, j)`` reads the 4x4 input patch ``d`` whose corner is
input pixel ``(2i - ph, 2j - pw)`` (zeros off the image) and, for every input channel ``c`` and
filter ``f`` with its 3x3 kernel ``g``, contributes

    Y = A^T [ (G g G^T) * (B^T d B) ] A            (* elementwise, 4x4; Y is the tile's 2x2)

    B^T = [[1, 0, -1,  0],     G = [[  1,    0,   0],     A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],          [1/2,  1/2, 1/2],            [0, 1, -1, -1]]
           [0, -1, 1,  0],          [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]          [  0,    0,   1]]

which is exactly the 2x2 cross-correlation of ``d`` with ``g`` (PyTorch's conv), with 16 products
instead of 36. Summed over the channels, the 16 elementwise products become 16 GEMMs: with
``V[k]`` (tiles, C) = the k-th entry of ``B^T d B`` for every tile and channel and ``U[k]`` (C, F)
the k-th entry of ``G g G^T`` (:func:`winograd_weights`), ``M[k] = V[k] @ U[k]``, and the output
transform ``A^T M A`` gives every tile's 2x2 outputs. So a 3x3 conv costs 16*C*F multiply-adds per
four outputs instead of 36*C*F, in GEMMs only C wide (BLAS runs those slower, about 70 %), plus two
transforms that are additions only. The weights' transform multiplies by 1/2, which is exact; the
transforms' additions round differently from the direct sum, so the result equals the conv to
rounding (a few units of float32's last place times the kernel's size).

The input gradient of a stride-1 conv, a conv of dL/dy with the kernel flipped and its channels
swapped, may take this kernel too, and the weight gradient reuses its input transform
(:func:`npcnn.kernels.winograd_general.winograd_weight_grad_chunk`); a conv that does not fit
(:func:`npcnn.fast.winograd.fits`) is im2col + GEMM (:mod:`npcnn.kernels.conv_rows`).

How the transforms' loops are written, and why: they are additions over runs of C values (a tile's
channels) or tw*C (a row of tiles), and their cost was numba's bookkeeping around the loops, not the
additions (2-core AMD EPYC Zen 4, one thread, 16 -> 16 channels at 28x28, per image). A view made for
each loop (``v[s].reshape(-1)[a:b]``) cost about as much as a 224-value loop, so the planes are reshaped
once per image and sliced in two dimensions (input transform 21.6 -> 13.9 us). A loop that writes four
arrays and reads four needs more run-time overlap checks than LLVM's vectoriser makes, and stays
scalar: one output array per loop. In the runs of C values the offsets are unsigned (``np.uint64``):
numba then drops its test for a negative index, which kept a loop indexed ``out[o + f]`` scalar, and no
view is made per tile (output transform 11.2 -> 7.2 us; the row transform, a view per tile column
before, 10.9 -> 7.1). Mixing ``np.uint64`` and ``int64`` gives float64 in numba, so unsigned offsets are
built from unsigned values only.
"""
import numpy as np
from numba import njit

from ..blas import NO_TRANS, _gemm
from ._compile import _OPTS

#: The transforms as matrices (documentation and tests; the kernels below write them out).
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def winograd_weights(weight):
    """``U`` (16, C, F), ``U[4r + s, c, f] = (G g G^T)[r, s]`` for ``g = weight[f, c]`` (F, C, 3, 3), summed in
    the weight's dtype (:func:`transformed_weights` with G). G's entries are 0, 1/2 and 1, so each entry of
    ``U`` is a sum of at most 9 exact products, within a few roundings of the float64 sum; summed in float64
    and converted back, the small ResNet's four Winograd convs took 109 instead of 55 us a step (2-core AMD
    EPYC Zen 4)."""
    return transformed_weights(weight, G, sum_dtype=weight.dtype)


def transformed_weights(weight, g_mat, out=None, sum_dtype=np.float64):
    """``U[alpha*s + t, c, f] = (G g G^T)[s, t]`` for every kernel ``g = weight[f, c]`` (F, C, r, r), with
    ``G = g_mat`` (alpha, r): since ``(G g G^T)[s, t] = sum_pq G[s, p] G[t, q] g[p, q]``, one product of
    the Kronecker matrix ``G (x) G`` (alpha^2, r^2) with all kernels as the columns of an (r^2, C*F)
    matrix, summed in ``sum_dtype`` (float64 for a G whose entries are not exact in binary, as
    F(2x2, 5x5)'s sixths and twelfths), written in ``out`` (alpha^2, C, F) or a new array of the weight's
    dtype. (A loop over the kernels writing the alpha^2 planes of ``U`` in turn ran 2.7 times slower at
    64 x 64 channels: the planes lie a power of two apart and fought over the same cache sets.)"""
    f, c, r = weight.shape[0], weight.shape[1], weight.shape[2]
    columns = np.ascontiguousarray(weight.reshape(f, c, r * r).transpose(2, 1, 0), dtype=sum_dtype)
    alpha = g_mat.shape[0]
    kron = (g_mat[:, None, :, None] * g_mat[None, :, None, :]).reshape(alpha * alpha, r * r)   # [st, pq]
    u = np.matmul(kron.astype(sum_dtype), columns.reshape(r * r, c * f))
    if out is None:
        return u.astype(weight.dtype, copy=False).reshape(-1, c, f)
    out[...] = u.reshape(out.shape)
    return out


@njit(**_OPTS)
def tiles(ho, wo):
    """The 2x2 tiles covering an ``ho`` x ``wo`` output: (rows of tiles, columns of tiles)."""
    return (ho + 1) // 2, (wo + 1) // 2


@njit(**_OPTS)
def _row_transform(x3, n, y, n_ch, pw, tw, line, hrow):
    """``hrow`` (4, tw*C): ``d B`` of input row ``y`` of image ``n`` for every tile column ``j`` and
    channel (``hrow[s, j*C + c]``, entry s), zeros for a row off the image. ``line`` ((2*tw + 2)*C)
    scratch: the row zero-padded to the tiles' width, its even columns ``E`` first, then its odd ones
    ``O``. Tile column ``j`` reads padded columns 2j .. 2j+3, that is ``E[j], O[j], E[j+1], O[j+1]``, so
    each entry is one long loop over all tile columns and channels at once: ``E[j] - E[j+1]``,
    ``O[j] + E[j+1]``, ``E[j+1] - O[j]``, ``O[j] - O[j+1]``. (Read from the padded row in place, it was
    four loops of C values per tile column: 7.1 against 3.5 us per 16-channel 28x28 image.)"""
    h, w = x3.shape[1], x3.shape[2] // n_ch
    zero = line.dtype.type(0)
    if y < 0 or y >= h:
        hrow[:] = zero
        return
    row = x3[n, y]
    half = (tw + 1) * n_ch
    even, odd = line[:half], line[half:]
    nc = np.uint64(n_ch)                                 # unsigned offsets (module docstring)
    for k in range(tw + 1):
        base = np.uint64(k) * nc
        for out, col in ((even, 2 * k - pw), (odd, 2 * k + 1 - pw)):
            if 0 <= col < w:
                src = np.uint64(col) * nc
                for c in range(nc):
                    out[base + c] = row[src + c]
            else:
                for c in range(nc):
                    out[base + c] = zero
    run = tw * n_ch
    even1, odd1 = even[n_ch:], odd[n_ch:]                # E[j + 1], O[j + 1]
    h0, h1, h2, h3 = hrow[0], hrow[1], hrow[2], hrow[3]
    for q in range(run):
        h0[q] = even[q] - even1[q]
    for q in range(run):
        h1[q] = odd[q] + even1[q]
    for q in range(run):
        h2[q] = even1[q] - odd[q]
    for q in range(run):
        h3[q] = odd[q] - odd1[q]


@njit(**_OPTS)
def _input_transform_image(x3, n, n_ch, ph, pw, th, tw, line, hrows, v, base):
    """``v[k, base + i*tw + j, :]`` = entry k of ``B^T d B`` for tile (i, j) of image ``n`` of ``x3``
    (N, H, W*C) channels last. Each input row's ``d B`` (:func:`_row_transform`) is computed once,
    into ``hrows`` (4, 4, tw*C) (row y in ``hrows[y % 4]``: a row of tiles reads four rows, and shares
    two with the next); ``B^T`` then combines four rows in long runs of tw*C."""
    run = np.uint64(tw * n_ch)
    planes = v.reshape(16, v.shape[1] * n_ch)            # reshaped once: a reshape per loop cost as much as the loop
    rows = hrows.reshape(16, hrows.shape[2])             # row r's entry s is rows[4r + s]
    for q in range(2):                                   # the first row of tiles' first two rows
        _row_transform(x3, n, q - ph, n_ch, pw, tw, line, hrows[q])
    for i in range(th):
        y0 = 2 * i - ph
        for q in range(2, 4):
            _row_transform(x3, n, y0 + q, n_ch, pw, tw, line, hrows[(2 * i + q) % 4])
        # the four rows' entries and the planes indexed, not sliced (a view per loop cost a tenth of the
        # transform), with unsigned offsets (module docstring)
        r0, r1 = np.uint64((2 * i) % 4 * 4), np.uint64((2 * i + 1) % 4 * 4)
        r2, r3 = np.uint64((2 * i + 2) % 4 * 4), np.uint64((2 * i + 3) % 4 * 4)
        lo = np.uint64((base + i * tw) * n_ch)
        for s in range(np.uint64(4)):
            a, b, e, f = r0 + s, r1 + s, r2 + s, r3 + s
            p0, p1, p2, p3 = s, s + np.uint64(4), s + np.uint64(8), s + np.uint64(12)
            for q in range(run):                         # one output per loop (module docstring)
                planes[p0, lo + q] = rows[a, q] - rows[e, q]
            for q in range(run):
                planes[p1, lo + q] = rows[b, q] + rows[e, q]
            for q in range(run):
                planes[p2, lo + q] = rows[e, q] - rows[b, q]
            for q in range(run):
                planes[p3, lo + q] = rows[b, q] - rows[f, q]


@njit(**_OPTS)
def _output_transform_image(m, base, th, tw, ho, wo, srows, rows):
    """``rows`` (ho*wo, F) of one image = ``A^T M A`` of its tiles ``m[:, base + i*tw + j]`` (16, F):
    ``A^T M`` of a row of tiles in long runs of tw*F into ``srows`` (2, 4, tw*F), then ``A`` per tile."""
    n_f = m.shape[2]
    run = tw * n_f
    planes = m.reshape(16, m.shape[1] * n_f)
    nf, pairs = np.uint64(n_f), np.uint64(wo // 2)      # the tiles whose second column is on the output
    for i in range(th):
        lo = (base + i * tw) * n_f
        for s in range(4):
            m0, m1, m2, m3 = (planes[s, lo:lo + run], planes[4 + s, lo:lo + run], planes[8 + s, lo:lo + run],
                              planes[12 + s, lo:lo + run])
            a, b = srows[0, s], srows[1, s]
            for q in range(run):
                a[q] = m0[q] + m1[q] + m2[q]
            for q in range(run):
                b[q] = m1[q] - m2[q] - m3[q]
        for r in range(2):
            y = 2 * i + r
            if y >= ho:
                break
            sr = srows[r]
            e0, e1, e2, e3 = sr[0], sr[1], sr[2], sr[3]
            out = rows[y * wo:(y + 1) * wo].reshape(-1)
            for j in range(np.uint64(tw)):
                g = j * nf
                o = g + g
                for f in range(nf):
                    out[o + f] = e0[g + f] + e1[g + f] + e2[g + f]
                if j < pairs:
                    o += nf
                    for f in range(nf):
                        out[o + f] = e1[g + f] - e2[g + f] - e3[g + f]


@njit(**_OPTS)
def _grad_row_transform(g3, n, y, n_f, tw, hrow):
    """``hrow`` (4, tw*F): ``A g`` of row ``y`` of image ``n`` of ``g3`` (N, ho, wo*F), the weight gradient's
    transform of dL/dy (:func:`npcnn.kernels.winograd_general.winograd_weight_grad_chunk`), for every tile
    column ``j``: with ``a``, ``b`` its two columns (``b`` zero past the output's edge), ``(a, a + b, a - b,
    -b)``, which is ``A = A_T^T`` applied; zeros for a row past the output."""
    wo = g3.shape[2] // n_f
    zero = hrow.dtype.type(0)
    if y >= g3.shape[1]:
        hrow[:] = zero
        return
    row = g3[n, y]
    h0, h1, h2, h3 = hrow[0], hrow[1], hrow[2], hrow[3]
    nf, pairs = np.uint64(n_f), np.uint64(wo // 2)     # unsigned offsets (module docstring)
    for j in range(np.uint64(tw)):
        o = j * nf
        s = o + o
        if j < pairs:
            for f in range(nf):
                h0[o + f] = row[s + f]
            for f in range(nf):
                h1[o + f] = row[s + f] + row[s + nf + f]
            for f in range(nf):
                h2[o + f] = row[s + f] - row[s + nf + f]
            for f in range(nf):
                h3[o + f] = -row[s + nf + f]
        else:                                           # the last tile of an odd width: b = 0
            for f in range(nf):
                h0[o + f] = row[s + f]
                h1[o + f] = row[s + f]
                h2[o + f] = row[s + f]
                h3[o + f] = zero


@njit(**_OPTS)
def grad_transform_image(g3, n, n_f, th, tw, hrows, gv, base):
    """``gv[4r + s, base + i*tw + j, :]`` = entry (r, s) of ``A g A^T`` for the 2x2 tile (i, j) of dL/dy,
    image ``n`` of ``g3`` (N, ho, wo*F), zeros past the output's edge: the weight gradient's transform of
    the gradient for F(2x2, 3x3), written out (the general kernel's ``_input_transform_general`` with A
    computes the same, 1.5-2 times slower). ``hrows`` (2, 4, tw*F) scratch."""
    run = tw * n_f
    planes = gv.reshape(16, gv.shape[1] * n_f)
    for i in range(th):
        _grad_row_transform(g3, n, 2 * i, n_f, tw, hrows[0])
        _grad_row_transform(g3, n, 2 * i + 1, n_f, tw, hrows[1])
        lo = (base + i * tw) * n_f
        for s in range(4):
            a, b = hrows[0, s], hrows[1, s]
            v0, v1, v2, v3 = (planes[s, lo:lo + run], planes[4 + s, lo:lo + run], planes[8 + s, lo:lo + run],
                              planes[12 + s, lo:lo + run])
            for q in range(run):
                v0[q] = a[q]
            for q in range(run):
                v1[q] = a[q] + b[q]
            for q in range(run):
                v2[q] = a[q] - b[q]
            for q in range(run):
                v3[q] = -b[q]


@njit(**_OPTS)
def winograd_conv_rows(blas_fn, ilp64, x3, first, last, n_ch, ph, pw, ho, wo, u, v, m, rows):
    """The 3x3 stride-1 conv (no bias) of images ``[first, last)`` of ``x3`` (N, H, W*C) channels
    last, padded by ``ph``, ``pw``, into ``rows`` ((last - first)*ho*wo, F): input transform into ``v``
    (16, >= tiles, C), 16 GEMMs ``m[k] = v[k] @ u[k]`` (``u`` from :func:`winograd_weights`; ``m``
    (16, >= tiles, F)), output transform. (Give ``v`` and ``m`` a row more than the tiles: planes a
    power of two apart would all fall on the same few cache sets.) ``blas_fn`` the ?gemm address (:func:`npcnn.blas.kernel_gemm`)."""
    th, tw = tiles(ho, wo)
    per_image, p = th * tw, ho * wo
    n_f = u.shape[2]
    n_tiles = (last - first) * per_image
    line = np.empty((2 * tw + 2) * n_ch, dtype=x3.dtype)
    hrows = np.empty((4, 4, tw * n_ch), dtype=x3.dtype)
    for n in range(first, last):
        _input_transform_image(x3, n, n_ch, ph, pw, th, tw, line, hrows, v, (n - first) * per_image)
    double = x3.itemsize == 8
    for k in range(16):
        _gemm(blas_fn, double, ilp64, NO_TRANS, NO_TRANS, n_tiles, n_f, n_ch, v[k].ctypes.data, n_ch,
              u[k].ctypes.data, n_f, m[k].ctypes.data, n_f)
    srows = np.empty((2, 4, tw * n_f), dtype=x3.dtype)
    for n in range(first, last):
        _output_transform_image(m, (n - first) * per_image, th, tw, ho, wo, srows, rows[(n - first) * p:(n - first + 1) * p])
    return rows
