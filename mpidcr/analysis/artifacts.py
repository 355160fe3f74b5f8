"""How well artifact rejection worked on a simulated field (``mpidcr simulate --cosmic-rays --satellites``).

Against the truth file's ``artifacts`` and ``trails`` (per visit of the simulation, (V, ny, nx);
warp ``visit_<1000 + v>`` is row v): the share of artifact pixels marked CLIPPED or STREAK; the share
of source-footprint pixels (DETECTED of the warps) clipped; and, against the model of the same field
without artifacts, the largest difference of the models along the trail paths in units of the
model's noise, and the ≥5σ pixels on trail paths of PSF-matched science − template differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..io.modelfile import read_model
from ..masks import plane_bits
from .evaluate import difference_significance


def truth_row(visit: str) -> int:
    """The truth file's row of a simulated visit id (1000 + row)."""
    return int(visit) - 1000


def caught(clipped: list[NDArray[np.bool_]], visits: list[str], truth: dict[str, NDArray],
           detected: list[NDArray[np.bool_]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Share of the truth's artifact pixels (and trail pixels) inside each warp's rejected pixels;
    with ``detected`` (each warp's source footprints), the share of those, artifacts aside, rejected."""
    artifacts, trails = truth["artifacts"], truth.get("trails")
    hit = total = hit_trail = total_trail = sources_clipped = sources = 0
    for i, (mask, visit) in enumerate(zip(clipped, visits, strict=True)):
        det = detected[i] if detected is not None else None
        row = truth_row(visit)
        a = artifacts[row] if row < len(artifacts) else np.zeros_like(mask)
        hit += int(np.count_nonzero(a & mask))
        total += int(np.count_nonzero(a))
        if trails is not None and row < len(trails):
            hit_trail += int(np.count_nonzero(trails[row] & mask))
            total_trail += int(np.count_nonzero(trails[row]))
        if det is not None:
            sources_clipped += int(np.count_nonzero(det & mask & ~a))
            sources += int(np.count_nonzero(det & ~a))
    return {
        "artifact_pixels": total,
        "caught": hit / total if total else float("nan"),
        "trail_caught": hit_trail / total_trail if total_trail else float("nan"),
        "source_pixels_clipped": sources_clipped / sources if sources else float("nan"),
    }


def trail_paths(truth: dict[str, NDArray]) -> NDArray[np.bool_]:
    """Every trail's pixels, over all visits."""
    trails = truth.get("trails")
    if trails is None:
        return np.zeros(truth["artifacts"].shape[1:], dtype=bool)
    return np.asarray(np.asarray(trails).any(axis=0), dtype=bool)


def model_noise(path: str) -> NDArray[np.float64]:
    """A sub-filter plane's noise per pixel: √(K · coadd variance) (K planes share the information
    the coadd has once)."""
    model = read_model(path)
    return np.sqrt(model.model.shape[0] * model.variance.astype(np.float64))


def compare_on(paths: NDArray[np.bool_], model_path: str, reference_path: str) -> dict[str, float]:
    """Largest |difference| of the two models' planes (and static models) on ``paths``, in units of
    the reference's model noise (:func:`model_noise`) and of its coadd noise."""
    a, b = read_model(model_path), read_model(reference_path)
    noise = model_noise(reference_path)
    coadd_noise = np.sqrt(b.variance.astype(np.float64))
    planes = np.abs(a.model.astype(np.float64) - b.model.astype(np.float64)) / noise
    static = np.abs(a.static.astype(np.float64) - b.static.astype(np.float64)) / coadd_noise
    return {
        "pixels": int(np.count_nonzero(paths)),
        "planes_max": float(planes[:, paths].max(initial=0.0)),
        "planes_over_3": int(np.count_nonzero(planes[:, paths] > 3.0)),
        "static_max": float(static[paths].max(initial=0.0)),
    }


def detections_on(paths: NDArray[np.bool_], model_path: str, reference_path: str, science: list[str],
                  threshold: float = 5.0, edge: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Over the science warps, the ≥ ``threshold``σ footprints (8-connected, either sign) of the
    PSF-matched differences against each model's DCR-matched template that touch ``paths``, for the
    model and the reference (same field, no artifacts), and the largest change of the significance
    on ``paths`` between the two."""
    from scipy import ndimage

    model, reference = read_model(model_path), read_model(reference_path)
    edge = int(model.attrs.get("buffer", 4)) if edge is None else edge
    eight = np.ones((3, 3), dtype=bool)

    def touching(sig: NDArray) -> int:
        n = 0
        for selection in (sig >= threshold, sig <= -threshold):
            labels, _ = ndimage.label(selection, structure=eight)
            n += len(np.setdiff1d(np.unique(labels[paths & selection]), [0]))
        return n

    found, baseline, change = 0, 0, 0.0
    for warp in science:
        sig, ref = difference_significance(model, warp, edge), difference_significance(reference, warp, edge)
        found += touching(sig)
        baseline += touching(ref)
        change = max(change, float(np.abs(sig - ref)[paths].max(initial=0.0)))
    return {"footprints": found, "footprints_reference": baseline, "max_change_sigma": change}


def detected_pixels(mask: NDArray, planes: dict[str, int]) -> NDArray[np.bool_]:
    """A warp's source footprints (DETECTED)."""
    return (mask & plane_bits(planes, ["DETECTED"])) != 0


def rejected_masks(model_path: str) -> tuple[list[str], list[NDArray[np.bool_]]]:
    """(visit ids, each visit's rejected pixels: CLIPPED or in a grown streak) from a model file."""
    import h5py

    with h5py.File(model_path, "r") as f:
        if "artifacts/clipped" not in f:
            raise KeyError(f"{model_path}: no /artifacts/clipped (run with doRejectArtifacts = true)")
        packed = f["artifacts/clipped"][...] | f["artifacts/streak"][...]
        ny, nx = f["coadd/image"].shape
        visits = [v.decode() if isinstance(v, bytes) else str(v) for v in f["visits"]["visit"]]
    return visits, [np.unpackbits(row, count=ny * nx).reshape(ny, nx).astype(bool) for row in packed]


def warp_detected(manifest_warps: list[str]) -> dict[str, NDArray[np.bool_]]:
    """Each warp's DETECTED pixels, by visit id."""
    from ..io.warps import read_window, scan_warp
    from ..tiling import Box

    out = {}
    for path in manifest_warps:
        info = scan_warp(path)
        ny, nx = info.shape
        _, _, mask = read_window(info, Box(0, ny, 0, nx), dict(info.mask_planes))
        out[info.visit] = detected_pixels(mask, dict(info.mask_planes))
    return out
