"""The shift work of an iteration at interpolation order 1, fused: template, metric sums, residual
and reverse shifts into every sub-filter accumulator, cache-blocked by rows.

:class:`SweepPlan` (what the solver uses) runs all visits in one call with row blocks outside
and visits inside, in parallel over runs of blocks when numba has several threads; :class:`VisitPass`
does one visit at a time and is the simpler twin the tests compare it with.  Per visit:

For a block of rows the kernel builds the template rows (K sub-filters × 2 split shifts, each
a bilinear shift), the residual rows, the visit's metric sums over the inner box, and then the
reverse shifts of every residual row whose neighbours are ready into the K accumulators.  Each
warp row is read once (the sweep keeps the residual rows a neighbouring block also needs) and
the block's rows stay in cache; the results equal the per-shift path
(`shift.build_template` + `shift.accumulate_reverse`) to rounding.  Axis order (y, x).

Precision: template, residual and accumulators are computed in the dtype of the model planes
(the solver uses float32: half the memory traffic and twice the SIMD width of float64; each
accumulator pixel sums only K·V short terms); the metric sums are float64.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from .shift import _interior, tap_table
from .threads import threadable


@numba.njit(cache=True, nogil=True, inline="always")
def _row_add(orow, r0, r1, w0, w1, ix, wx, xa, xb, offset, va, vb, assign=False):  # pragma: no cover - compiled
    """orow += w0·shift_x(r0) + w1·shift_x(r1), bilinear along x: columns [xa, xb) in one
    vectorised loop, the other columns of [va, vb) (at most one at each end) from the tables;
    columns outside [va, vb) sample outside the row and get nothing.  With ``assign``, orow =
    (the first shift of a template row: no zeroing pass, one load less per pixel)."""
    if assign:
        _clear_outside(orow, xa, xb)
    if xb > xa:
        a00, a01, a10, a11 = _coefficients(orow, w0, w1, wx, xa)
        # slices indexed from 0 let LLVM drop numba's negative-index checks and vectorise
        m = xb - xa
        o = orow[xa:xb]
        p0 = r0[xa + offset : xb + offset + 1]
        p1 = r1[xa + offset : xb + offset + 1]
        if assign:
            for j in range(m):
                o[j] = a00 * p0[j] + a01 * p0[j + 1] + a10 * p1[j] + a11 * p1[j + 1]
        else:
            for j in range(m):
                o[j] += a00 * p0[j] + a01 * p0[j + 1] + a10 * p1[j] + a11 * p1[j + 1]
    # the edge columns (integer x shifts, or no interior run) in a separate function, called
    # only when there are any
    if va < xa or xb < vb or xb <= xa:
        _edges(orow, r0, r1, w0, w1, ix, wx, xa, xb, va, vb)


@numba.njit(cache=True, nogil=True, inline="always")
def _rows_add(o0, o1, r0, r1, r2, w0, w1, ix, wx, xa, xb, offset, va, vb, assign=False):  # pragma: no cover - compiled
    """Two consecutive output rows of one shift at once: o0 += the shift of (r0, r1), o1 += that of
    (r1, r2), same weights.  The shared row r1 is loaded once for both (6 instead of 8 loads per
    vector: the pass is bound by loads); each output is evaluated exactly as :func:`_row_add` does."""
    if assign:
        _clear_outside(o0, xa, xb)
        _clear_outside(o1, xa, xb)
    if xb > xa:
        a00, a01, a10, a11 = _coefficients(o0, w0, w1, wx, xa)
        m = xb - xa
        q0 = o0[xa:xb]
        q1 = o1[xa:xb]
        p0 = r0[xa + offset : xb + offset + 1]
        p1 = r1[xa + offset : xb + offset + 1]
        p2 = r2[xa + offset : xb + offset + 1]
        if assign:
            for j in range(m):
                e = p1[j]
                f = p1[j + 1]
                q0[j] = a00 * p0[j] + a01 * p0[j + 1] + a10 * e + a11 * f
                q1[j] = a00 * e + a01 * f + a10 * p2[j] + a11 * p2[j + 1]
        else:
            for j in range(m):
                e = p1[j]
                f = p1[j + 1]
                q0[j] += a00 * p0[j] + a01 * p0[j + 1] + a10 * e + a11 * f
                q1[j] += a00 * e + a01 * f + a10 * p2[j] + a11 * p2[j + 1]
    if va < xa or xb < vb or xb <= xa:
        _edges(o0, r0, r1, w0, w1, ix, wx, xa, xb, va, vb)
        _edges(o1, r1, r2, w0, w1, ix, wx, xa, xb, va, vb)


@numba.njit(cache=True, nogil=True, inline="always")
def _coefficients(orow, w0, w1, wx, xa):  # pragma: no cover - compiled
    """The four tap coefficients of an interior run (row weights × the run's column weights), in
    the row's precision: float64 scalars would promote a float32 loop."""
    c0, c1 = wx[xa, 0], wx[xa, 1]
    t = orow.dtype.type
    return t(w0 * c0), t(w0 * c1), t(w1 * c0), t(w1 * c1)


@numba.njit(cache=True, nogil=True, inline="always")
def _clear_outside(orow, xa, xb):  # pragma: no cover - compiled
    """orow = 0 outside [xa, xb) (everywhere if the run is empty)."""
    if xb <= xa:
        orow[:] = 0
    else:
        orow[: max(xa, 0)] = 0
        orow[xb:] = 0


@numba.njit(cache=True, nogil=True)
def _edges(orow, r0, r1, w0, w1, ix, wx, xa, xb, va, vb):  # pragma: no cover - compiled
    """orow[x] += the bilinear shift of w0·r0 + w1·r1 from the tap tables at the columns of
    [va, vb) outside the interior run [xa, xb) (all of them if the run is empty)."""
    nx = orow.shape[0]
    if xb <= xa:
        xa = xb = vb
    for x in range(va, min(xa, nx)):
        orow[x] += _tap(r0, r1, w0, w1, ix, wx, x)
    for x in range(max(xb, 0), vb):
        orow[x] += _tap(r0, r1, w0, w1, ix, wx, x)


@numba.njit(cache=True, nogil=True, inline="always")
def _tap(r0, r1, w0, w1, ix, wx, x):  # pragma: no cover - compiled
    """The bilinear shift of w0·r0 + w1·r1 at column x, from the tap tables."""
    return w0 * (wx[x, 0] * r0[ix[x, 0]] + wx[x, 1] * r0[ix[x, 1]]) + w1 * (
        wx[x, 0] * r1[ix[x, 0]] + wx[x, 1] * r1[ix[x, 1]]
    )


# fmt: off
@numba.njit(cache=True, nogil=True)
def _forward_row(y, planes, image, good, converge, significance, inner, ftab, trow, rrow, count):  # pragma: no cover
    """Template row ``y`` into ``trow`` and residual row into ``rrow``; with ``count``, returns the row's
    metric sums (Σ|s−t|·S, Σ|s+t|·S/2) over the inner box (else zeros).  ``good`` and ``converge``
    are 0/1 uint8 images; bad pixels of ``image`` hold 0.

    ``ftab`` = (iy, wy, ix, wx, xa, xb, offset, va, vb, scale) of the K·J forward shifts (see
    :class:`VisitPass`); shift f belongs to plane f // J.
    """
    fiy, fwy, fix, fwx, fxa, fxb, foff, fva, fvb, fscale = ftab
    nf = fiy.shape[0]
    per = nf // planes.shape[0]
    first = True  # the first shift assigns the row
    for f in range(nf):
        w0 = fwy[f, y, 0] * fscale[f]
        w1 = fwy[f, y, 1] * fscale[f]
        if w0 == 0.0 and w1 == 0.0:
            continue
        p = planes[f // per]
        _row_add(trow, p[fiy[f, y, 0]], p[fiy[f, y, 1]], w0, w1, fix[f], fwx[f], fxa[f], fxb[f], foff[f], fva[f],
                 fvb[f], first)
        first = False
    if first:
        trow[:] = 0.0
    return _residual_row(y, image, good, converge, significance, inner, trow, rrow, count)


@numba.njit(cache=True, nogil=True, inline="always")
def _forward_rows(y, planes, image, good, converge, significance, inner, ftab, fpair, t0, t1, r0, r1, count0, count1):  # pragma: no cover
    """Rows ``y`` and ``y + 1`` of :func:`_forward_row` (same results): a shift whose two rows read
    consecutive input rows with the same weights (``fpair[f, y]``: every shift away from the
    y-edges) makes one pass over both with :func:`_rows_add`.  Returns the metric sums of both rows."""
    fiy, fwy, fix, fwx, fxa, fxb, foff, fva, fvb, fscale = ftab
    nf = fiy.shape[0]
    per = nf // planes.shape[0]
    first0 = first1 = True  # the first shift of each row assigns it
    for f in range(nf):
        p = planes[f // per]
        w0 = fwy[f, y, 0] * fscale[f]
        w1 = fwy[f, y, 1] * fscale[f]
        if fpair[f, y] and first0 == first1:
            if w0 != 0.0 or w1 != 0.0:
                _rows_add(t0, t1, p[fiy[f, y, 0]], p[fiy[f, y, 1]], p[fiy[f, y + 1, 1]], w0, w1, fix[f], fwx[f], fxa[f],
                          fxb[f], foff[f], fva[f], fvb[f], first0)
                first0 = first1 = False
            continue
        if w0 != 0.0 or w1 != 0.0:
            _row_add(t0, p[fiy[f, y, 0]], p[fiy[f, y, 1]], w0, w1, fix[f], fwx[f], fxa[f], fxb[f], foff[f], fva[f],
                     fvb[f], first0)
            first0 = False
        u0 = fwy[f, y + 1, 0] * fscale[f]
        u1 = fwy[f, y + 1, 1] * fscale[f]
        if u0 != 0.0 or u1 != 0.0:
            _row_add(t1, p[fiy[f, y + 1, 0]], p[fiy[f, y + 1, 1]], u0, u1, fix[f], fwx[f], fxa[f], fxb[f], foff[f],
                     fva[f], fvb[f], first1)
            first1 = False
    if first0:
        t0[:] = 0.0
    if first1:
        t1[:] = 0.0
    d0, m0 = _residual_row(y, image, good, converge, significance, inner, t0, r0, count0)
    d1, m1 = _residual_row(y + 1, image, good, converge, significance, inner, t1, r1, count1)
    return d0, m0, d1, m1


@numba.njit(cache=True, nogil=True, inline="always")
def _residual_row(y, image, good, converge, significance, inner, trow, rrow, count):  # pragma: no cover
    """Residual row ``y`` of template row ``trow`` into ``rrow``, and the row's metric sums when ``count``
    (in the same pass over the inner box's columns)."""
    srow = image[y]
    grow = good[y]
    if not (count and inner[0] <= y < inner[1]):
        _residual(srow, trow, grow, rrow)
        return 0.0, 0.0
    x0, x1 = inner[2], inner[3]
    _residual(srow[:x0], trow[:x0], grow[:x0], rrow[:x0])
    _residual(srow[x1:], trow[x1:], grow[x1:], rrow[x1:])
    return _metric_row(srow[x0:x1], trow[x0:x1], grow[x0:x1], converge[y, x0:x1], significance[y, x0:x1], rrow[x0:x1])


@numba.njit(cache=True, nogil=True, inline="always")
def _residual(srow, trow, grow, rrow):  # pragma: no cover
    """rrow = (srow − trow) · good."""
    for x in range(srow.shape[0]):
        rrow[x] = (srow[x] - trow[x]) * rrow.dtype.type(grow[x])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _metric_row(srow, trow, good, converge, significance, rrow):  # pragma: no cover
    """(Σ|s−t|·S·u, Σ|s+t|·S·u/2) over one row, u = good·converge (0/1, so the loop has no branch),
    and the residual row (s − t)·good into ``rrow`` in the same loop.

    The residual and the terms are computed in the template's precision (float32 in the solver)
    and each term's product in float64 (exact for float32 factors), summed in float64: the sums
    then hardly depend on how the columns are split into tiles, so the gain — and the model —
    are the same for any number of ranks (float32 partial sums differed by ~1e-7 between
    decompositions, which reached the model through the gain).  Reassociating the sums
    (fastmath) lets them vectorise.  The flags are converted to the row's type explicitly:
    numba types ``uint8 & uint8`` as int64 and float32 × int64 as float64, which once made this
    loop float64 and scalar.  The model planes are finite by construction, so is the template."""
    diff_sum = 0.0
    ref_sum = 0.0
    real = trow.dtype.type
    for x in range(srow.shape[0]):
        e = srow[x] - trow[x]
        rrow[x] = e * real(good[x])
        m = np.float64(significance[x] * real(good[x] & converge[x]))
        diff_sum += np.float64(abs(e)) * m
        ref_sum += np.float64(abs(srow[x] + trow[x])) * m
    return diff_sum, ref_sum * 0.5


@numba.njit(cache=True, nogil=True)
def _reverse_row(y, residual, rtab, acc, ay):  # pragma: no cover
    """acc[k, ay] += reverse shift k of the residual at row ``y`` for every sub-filter k (``ay``:
    where row y lies in ``acc``, y itself or its slot in a ring of rows); residual row ``i`` is
    ``residual[i % len(residual)]`` (a ring of rows, or the whole residual image); ``rtab`` like ``ftab``."""
    riy, rwy, rix, rwx, rxa, rxb, roff, rva, rvb = rtab
    n = residual.shape[0]
    for k in range(acc.shape[0]):
        w0 = rwy[k, y, 0]
        w1 = rwy[k, y, 1]
        if w0 == 0.0 and w1 == 0.0:
            continue
        _row_add(acc[k, ay], residual[riy[k, y, 0] % n], residual[riy[k, y, 1] % n], w0, w1, rix[k],
                 rwx[k], rxa[k], rxb[k], roff[k], rva[k], rvb[k])


@numba.njit(cache=True, nogil=True, inline="always")
def _reverse_rows(y, residual, rtab, rpair, acc, ay0, ay1):  # pragma: no cover
    """Rows ``y`` and ``y + 1`` of :func:`_reverse_row` (into acc rows ``ay0`` and ``ay1``), a
    sub-filter with ``rpair[k, y]`` in one pass."""
    riy, rwy, rix, rwx, rxa, rxb, roff, rva, rvb = rtab
    n = residual.shape[0]
    for k in range(acc.shape[0]):
        w0 = rwy[k, y, 0]
        w1 = rwy[k, y, 1]
        if rpair[k, y]:
            if w0 != 0.0 or w1 != 0.0:
                _rows_add(acc[k, ay0], acc[k, ay1], residual[riy[k, y, 0] % n],
                          residual[riy[k, y, 1] % n], residual[riy[k, y + 1, 1] % n], w0, w1, rix[k],
                          rwx[k], rxa[k], rxb[k], roff[k], rva[k], rvb[k])
            continue
        if w0 != 0.0 or w1 != 0.0:
            _row_add(acc[k, ay0], residual[riy[k, y, 0] % n], residual[riy[k, y, 1] % n], w0, w1,
                     rix[k], rwx[k], rxa[k], rxb[k], roff[k], rva[k], rvb[k])
        u0 = rwy[k, y + 1, 0]
        u1 = rwy[k, y + 1, 1]
        if u0 != 0.0 or u1 != 0.0:
            _row_add(acc[k, ay1], residual[riy[k, y + 1, 0] % n], residual[riy[k, y + 1, 1] % n],
                     u0, u1, rix[k], rwx[k], rxa[k], rxb[k], roff[k], rva[k], rvb[k])


@numba.njit(cache=True, nogil=True)
def _forward_span(start, end, planes, image, good, converge, significance, inner, ftab, fpair, t0, t1, ring, owned0,
                  owned1, counted, block, partial):  # pragma: no cover
    """Template and residual rows [start, end] of one visit into the ring (row r at r % len(ring)),
    two at a time (see :func:`_forward_rows`), the last one alone.  The metric sums of rows in
    [owned0, owned1) beyond ``counted`` are added to ``partial[r // block]`` (row order); returns
    the last row counted.  One call per block and visit."""
    rows = ring.shape[0]
    r = start
    while r <= end:
        count0 = owned0 <= r < owned1 and r > counted
        if r < end:
            count1 = owned0 <= r + 1 < owned1 and r + 1 > counted
            d, m, d1, m1 = _forward_rows(r, planes, image, good, converge, significance, inner, ftab, fpair, t0, t1,
                                         ring[r % rows], ring[(r + 1) % rows], count0, count1)
            if count0:
                counted = _tally(partial, r, block, d, m)
            if count1:
                counted = _tally(partial, r + 1, block, d1, m1)
            r += 2
        else:
            d, m = _forward_row(r, planes, image, good, converge, significance, inner, ftab, t0, ring[r % rows], count0)
            if count0:
                counted = _tally(partial, r, block, d, m)
            r += 1
    return counted


@numba.njit(cache=True, nogil=True, inline="always")
def _tally(partial, row, block, d, m):  # pragma: no cover
    """Adds a row's metric sums to its block's; returns the row (now counted)."""
    partial[row // block, 0] += d
    partial[row // block, 1] += m
    return row


@numba.njit(cache=True, nogil=True)
def _reverse_span(b0, b1, ring, rtab, rpair, acc):  # pragma: no cover
    """Accumulator rows [b0, b1) of one visit from its residual ring (see :func:`_reverse_row`)."""
    for y in range(b0, b1, 2):
        if y + 1 < b1:
            _reverse_rows(y, ring, rtab, rpair, acc, y, y + 1)
        else:
            _reverse_row(y, ring, rtab, acc, y)


@numba.njit(cache=True, nogil=True)
def _visit_pass(planes, image, good, converge, significance, inner, ftab, rtab, lag, block, template, residual, acc):  # pragma: no cover
    """See the module docstring.  Returns (Σ|s−t|·S, Σ|s+t|·S/2) over the inner box's usable pixels."""
    ny = planes.shape[1]
    diff_sum = 0.0
    ref_sum = 0.0
    done = 0  # accumulator rows finished
    for b0 in range(0, ny + lag + block, block):
        b1 = min(b0 + block, ny)
        for y in range(b0, b1):
            d, r = _forward_row(y, planes, image, good, converge, significance, inner, ftab, template[y], residual[y],
                                True)
            diff_sum += d
            ref_sum += r
        # accumulator rows whose residual rows (≤ y + lag) are all computed
        ready = ny if b1 >= ny else max(b1 - lag, 0)
        for y in range(done, ready):
            _reverse_row(y, residual, rtab, acc, y)
        done = max(done, ready)
        if done >= ny:
            break
    return diff_sum, ref_sum


@threadable()
def _sweep_pass(planes, images, goods, converges, significance, inner, ftabs, rtabs, fpairs, rpairs, active, block, chunks,
                acc):  # pragma: no cover
    """All visits of one iteration with row blocks outside and visits inside, so a block's
    accumulator and model rows stay in cache while every visit passes over them.

    The blocks are split into ``chunks`` runs of consecutive blocks (one per numba thread; blocks
    write disjoint accumulator rows, so chunks run in parallel without races).  Within a chunk,
    each visit keeps its residual rows in a ring: the rows a block's reverse shifts need are
    computed once, those its successor also needs (the halo) are reused rather than recomputed.
    Each template row's metric sums go to the block that owns the row, in row order, and the
    blocks' sums are added in block order: the results do not depend on the chunks.  Returns the
    per-visit metric sums, (V, 2).
    """
    nv, ny, nx = images.shape
    fiy, fwy, fix, fwx, fxa, fxb, foff, fva, fvb, fscale = ftabs
    riy, rwy, rix, rwx, rxa, rxb, roff, rva, rvb = rtabs
    nblocks = (ny + block - 1) // block
    chunks = max(1, min(chunks, nblocks))
    # residual rows each (block, visit) needs: its own rows and those its reverse shifts read
    first = np.empty((nblocks, nv), dtype=np.int64)
    last = np.empty((nblocks, nv), dtype=np.int64)
    # ring slots for the active visits only (a call may run a few of many visits: the PSF-aware
    # model runs each blur group's visits in a call of its own)
    slot = np.full(nv, -1, dtype=np.int64)
    nslots = 0
    for v in range(nv):
        if active[v]:
            slot[v] = nslots
            nslots += 1
    for bi in range(nblocks):
        b0 = bi * block
        b1 = min(b0 + block, ny)
        for v in range(nv):
            if not active[v]:
                first[bi, v] = b0
                last[bi, v] = b1 - 1
                continue
            lo = b0
            hi = b1 - 1
            for y in range(b0, b1):
                for k in range(riy.shape[1]):
                    # both taps of a used row are read (one may have weight 0: 0 × garbage could be NaN)
                    if rwy[v, k, y, 0] != 0.0 or rwy[v, k, y, 1] != 0.0:
                        for t in range(2):
                            lo = min(lo, riy[v, k, y, t])
                            hi = max(hi, riy[v, k, y, t])
            first[bi, v] = lo
            last[bi, v] = hi
    rows = 2
    for bi in range(nblocks):
        for v in range(nv):
            if active[v]:
                rows = max(rows, last[bi, v] - first[bi, v] + 1)
    # scratch per chunk, allocated here: numba hoists allocations out of prange loops, which
    # would make a buffer allocated inside the loop shared by all threads (and
    # numba.get_thread_id would make the kernel uncacheable)
    trows = np.empty((chunks, 2, nx), dtype=planes.dtype)
    rings = np.zeros((chunks, max(nslots, 1), rows, nx), dtype=planes.dtype)  # zeros: a stray read never sees NaN
    partial = np.zeros((nblocks, nv, 2))
    for c in numba.prange(chunks):
        c0 = c * nblocks // chunks
        c1 = (c + 1) * nblocks // chunks
        t0 = trows[c, 0]
        t1 = trows[c, 1]
        oldest = np.full(nv, ny, dtype=np.int64)  # the ring holds rows [max(oldest, done − rows + 1), done]
        done = np.full(nv, -1, dtype=np.int64)
        counted = np.full(nv, -1, dtype=np.int64)  # rows whose metric sums are added, in row order
        for bi in range(c0, c1):
            b0 = bi * block
            b1 = min(b0 + block, ny)
            # the block's accumulator rows start at 0 here, in cache, rather than in a separate
            # pass over all of them before the sweep
            for k in range(acc.shape[0]):
                for y in range(b0, b1):
                    acc[k, y, :] = 0
            for v in range(nv):
                if not active[v]:
                    continue
                ftab = (fiy[v], fwy[v], fix[v], fwx[v], fxa[v], fxb[v], foff[v], fva[v], fvb[v], fscale[v])
                rtab = (riy[v], rwy[v], rix[v], rwx[v], rxa[v], rxb[v], roff[v], rva[v], rvb[v])
                ring = rings[c, slot[v]]
                start = done[v] + 1
                if first[bi, v] < max(oldest[v], done[v] - rows + 1) or first[bi, v] > done[v]:
                    start = first[bi, v]  # nothing to reuse (the first block, or a gap)
                    oldest[v] = start
                end = last[bi, v]
                counted[v] = _forward_span(start, end, planes, images[v], goods[v], converges[v], significance, inner,
                                           ftab, fpairs[v], t0, t1, ring, c0 * block, c1 * block, counted[v], block,
                                           partial[:, v])
                done[v] = max(done[v], end)
                _reverse_span(b0, b1, ring, rtab, rpairs[v], acc)
    sums = np.zeros((nv, 2))
    for bi in range(nblocks):  # in block order, so the sums do not depend on the thread count
        sums += partial[bi]
    return sums
# fmt: on


def _valid(weight: NDArray[np.float64]) -> tuple[int, int]:
    """[first, last + 1) of the columns whose taps have any nonzero weight ((0, 0) if none)."""
    used = np.flatnonzero(np.any(weight != 0.0, axis=1))
    return (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)


def _row_pairs(index: NDArray[np.int64], weight: NDArray[np.float64]) -> NDArray[np.bool_]:
    """(S, ny) bool: output rows y and y + 1 of shift s read input rows (i, i + 1) and (i + 1, i + 2)
    with the same weights, so one pass can make both (False for the last row)."""
    pair = np.zeros(index.shape[:2], dtype=bool)
    a, b = index[:, :-1], index[:, 1:]
    pair[:, :-1] = (
        (a[..., 1] == a[..., 0] + 1)
        & (b[..., 0] == a[..., 1])
        & (b[..., 1] == b[..., 0] + 1)
        & np.all(weight[:, 1:] == weight[:, :-1], axis=2)
    )
    return pair


def _stacked(tables: list[tuple[NDArray, NDArray]]) -> tuple[NDArray, NDArray]:
    """(index, weight) tap tables of several shifts stacked along a new first axis."""
    return (np.ascontiguousarray(np.stack([t[0] for t in tables])),
            np.ascontiguousarray(np.stack([t[1] for t in tables])))  # fmt: skip


def _column_spans(tables: list[tuple[NDArray, NDArray]]) -> tuple[NDArray, ...]:
    """Per shift, the interior column span and offset (:func:`_interior`) and the valid span (:func:`_valid`)."""
    interiors = [_interior(index, weight) for index, weight in tables]
    valid = [_valid(weight) for _, weight in tables]
    return (*(np.array(v, dtype=np.int64) for v in zip(*interiors, strict=True)),
            *(np.array(v, dtype=np.int64) for v in zip(*valid, strict=True)))  # fmt: skip


def _forward_scales(forward: NDArray) -> NDArray:
    """Weight of each of the K·J forward shifts: 1/J for split sub-filters; an unsplit sub-filter's
    identical shifts are applied once with weight 1 and their copies get 0, as the per-shift path does."""
    K, J = forward.shape[:2]
    same = [bool(np.all(forward[k] == forward[k, 0])) for k in range(K)]
    return np.array([(0.0 if i % J else 1.0) if same[i // J] else 1.0 / J for i in range(K * J)])


class VisitPass:
    """Tables of one visit's shifts for :func:`_visit_pass`, built once per run (the shifts are fixed)."""

    def __init__(self, shape: tuple[int, int], forward: NDArray, mean: NDArray, block: int = 16):
        ny, nx = shape
        K, J = forward.shape[:2]
        # every plane has J entries (shift f belongs to plane f // J)
        fy = [tap_table(ny, float(forward[k, j, 0]), 1) for k in range(K) for j in range(J)]
        fx = [tap_table(nx, float(forward[k, j, 1]), 1) for k in range(K) for j in range(J)]
        self.fiy, self.fwy = _stacked(fy)
        self.fix, self.fwx = _stacked(fx)
        self.fxa, self.fxb, self.foff, self.fva, self.fvb = _column_spans(fx)
        self.fscale = _forward_scales(forward)
        ry = [tap_table(ny, -float(mean[k, 0]), 1) for k in range(K)]
        rx = [tap_table(nx, -float(mean[k, 1]), 1) for k in range(K)]
        self.riy, self.rwy = _stacked(ry)
        self.rix, self.rwx = _stacked(rx)
        self.rxa, self.rxb, self.roff, self.rva, self.rvb = _column_spans(rx)
        # residual rows needed by accumulator row y: up to y + lag
        self.lag = max(0, int(np.max(self.riy.max(axis=2) - np.arange(ny)[None, :])))
        self.block = max(block, 1)
        self.ftab = (self.fiy, self.fwy, self.fix, self.fwx, self.fxa, self.fxb, self.foff, self.fva, self.fvb,
                     self.fscale)  # fmt: skip
        self.rtab = (self.riy, self.rwy, self.rix, self.rwx, self.rxa, self.rxb, self.roff, self.rva, self.rvb)

    def run(self, planes: NDArray, image: NDArray, good: NDArray, converge: NDArray, significance: NDArray,
            inner: tuple[int, int, int, int], template: NDArray, residual: NDArray,
            acc: NDArray) -> tuple[float, float]:  # fmt: skip
        """One visit: fills ``template`` and ``residual``, adds to ``acc``; returns the metric sums."""
        bounds = np.asarray(inner, dtype=np.int64)
        return _visit_pass(planes, image, _flags(good), _flags(converge), significance, bounds, self.ftab, self.rtab,
                           self.lag, self.block, template, residual, acc)  # fmt: skip


class SweepPlan:
    """The tables of every visit stacked for :func:`_sweep_pass` (all visits in one call)."""

    def __init__(self, passes: list[VisitPass], block: int | None = None):
        self.ftabs = tuple(
            np.ascontiguousarray(np.stack(arrays)) for arrays in zip(*(p.ftab for p in passes), strict=True)
        )
        self.rtabs = tuple(
            np.ascontiguousarray(np.stack(arrays)) for arrays in zip(*(p.rtab for p in passes), strict=True)
        )
        self.fpairs = np.ascontiguousarray(np.stack([_row_pairs(p.fiy, p.fwy) for p in passes]))
        self.rpairs = np.ascontiguousarray(np.stack([_row_pairs(p.riy, p.rwy) for p in passes]))
        # rows per block: by default about 32k pixels (32 rows of 1024, 8 of 4096), so that a
        # block's model and accumulator rows stay in cache while every visit passes over them;
        # since the residual rings reuse the halo rows, small blocks cost no recomputation
        # (measured at 4096 columns: 4, 8 and 16 rows within 4 %; at 1024: 8–32 rows within 7 %)
        self.block = None if block is None else max(int(block), 1)

    def block_rows(self, width: int) -> int:
        return self.block if self.block is not None else max(8, min(32, 32768 // max(width, 1)))

    def run(self, planes: NDArray, images: NDArray, goods: NDArray, converges: NDArray, significance: NDArray,
            inner: tuple[int, int, int, int], active: NDArray, acc: NDArray) -> NDArray:  # fmt: skip
        """Set ``acc`` (K, ny, nx) to the sum of every active visit's reverse-shifted residual (its
        previous contents are ignored); returns the (V, 2) metric sums."""
        return _sweep_pass(planes, images, _flags(goods), _flags(converges), significance,
                           np.asarray(inner, dtype=np.int64), self.ftabs, self.rtabs, self.fpairs, self.rpairs,
                           np.asarray(active, dtype=np.bool_), self.block_rows(planes.shape[2]),
                           numba.get_num_threads(), acc)  # fmt: skip


def _flags(a: NDArray) -> NDArray[np.uint8]:
    """A boolean image as 0/1 bytes (a view, no copy) for the kernels' branch-free arithmetic."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8) if a.dtype == np.bool_ else a.astype(np.uint8)


_ROUNDER = 6755399441055744.0  # 1.5 · 2^52: adding and subtracting it rounds a float64 to an integer


@numba.njit(cache=True, nogil=True, error_model="numpy")  # division without exception checks: vectorises
def _coverage_pass(goods, rtabs, active, inverse_weights, nimage, determined):  # pragma: no cover - compiled
    """Rows outside, sub-filters and visits inside: each row's K coverage sums are accumulated in
    cache over all visits in float64, then turned into the outputs in the same pass (rows outside
    and visits outside would stream float64 coverage planes V times, and numpy would make four
    more passes over them)."""
    riy, rwy, rix, rwx, rxa, rxb, roff, rva, rvb = rtabs
    nv = goods.shape[0]
    K, ny, nx = inverse_weights.shape
    row = np.empty(nx)
    crow = np.empty((K, nx))
    nrow = np.empty((K, nx), dtype=np.int32)
    ok = np.empty(nx, dtype=np.bool_)
    for y in range(ny):
        for k in range(K):
            c = crow[k]
            n = nrow[k]
            c[:] = 0.0
            n[:] = 0
            for v in range(nv):
                w0 = rwy[v, k, y, 0]
                w1 = rwy[v, k, y, 1]
                if not active[v] or (w0 == 0.0 and w1 == 0.0):
                    continue
                g = goods[v]
                _row_add(row, g[riy[v, k, y, 0]], g[riy[v, k, y, 1]], w0, w1, rix[v, k], rwx[v, k], rxa[v, k],
                         rxb[v, k], roff[v, k], rva[v, k], rvb[v, k], True)  # fmt: skip
                for x in range(nx):
                    c[x] += row[x]
                    # round half to even, as np.rint, by the 1.5·2^52 trick (|row| ≤ V): vectorises
                    n[x] += np.int32((row[x] + _ROUNDER) - _ROUNDER)
        # determined: every sub-filter covered by more than one input
        ok[:] = True
        for k in range(K):
            c = crow[k]
            for x in range(nx):
                ok[x] &= c[x] > 1.0
        determined[y] = ok
        for k in range(K):
            c, n, w, m = crow[k], nrow[k], inverse_weights[k, y], nimage[k, y]
            for x in range(nx):
                w[x] = 1.0 / c[x] if ok[x] else 0.0
                m[x] = n[x] if ok[x] else 0


def coverage(plan: SweepPlan, goods: NDArray, active: NDArray, inverse_weights: NDArray, nimage: NDArray,
             determined: NDArray) -> None:  # fmt: skip
    """From every active visit's reverse-shifted good-pixel indicators (coverage c_k = Σ_v, the
    update's weights, and its rounded sum, the inputs per pixel): fill ``determined`` (ny, nx,
    bool) where every sub-filter has c_k > 1, and on those pixels ``inverse_weights`` (K, ny, nx)
    with 1/c_k and ``nimage`` (int32) with Σ_v rint(·); both 0 elsewhere."""
    _coverage_pass(_flags(goods), plan.rtabs, np.asarray(active, dtype=np.bool_), inverse_weights, nimage,
                   determined)  # fmt: skip
