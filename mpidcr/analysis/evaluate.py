"""Science evaluation of a model: DCR-matched vs plain-coadd templates on held-out visits.

For each science warp: the difference image against the DCR-matched template
and against the static sky model (the plain coadd), the residual RMS inside
the warp's source footprints (``DETECTED``), and the number of ≥5σ footprints
(positive and negative, 8-connected) in each difference — on simulated data
every one of them is false.  With a truth file, sub-filter colours of bright
stars are compared with the truth (slope and scatter of model vs true
log flux ratio between the bluest and reddest sub-filters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..io.modelfile import ModelFile, read_model
from ..io.products import observation_for_warp, template_config, template_for
from ..io.warps import read_window
from ..masks import plane_bits
from ..tiling import Box

DETECTION_SIGMA = 5.0


def count_detections(significance: NDArray, threshold: float = DETECTION_SIGMA) -> tuple[int, int]:
    """(positive, negative) 8-connected footprints with |significance| ≥ threshold."""
    eight = np.ones((3, 3), dtype=bool)
    pos = ndimage.label(significance >= threshold, structure=eight)[1]
    neg = ndimage.label(significance <= -threshold, structure=eight)[1]
    return int(pos), int(neg)


def evaluate_visit(model: ModelFile, warp_path: str, edge: int) -> dict[str, Any]:
    info, obs = observation_for_warp(warp_path, cfg=template_config(model))
    ny, nx = model.model.shape[1:]
    planes = dict(info.mask_planes)
    image, variance, mask = read_window(info, Box(0, ny, 0, nx), planes)
    dcr = template_for(model, obs)
    bad = plane_bits(planes, ["NO_DATA", "BAD", "SAT"])
    valid = ((mask & bad) == 0) & np.isfinite(image)
    if model.nimage_total is not None:
        valid &= model.nimage_total > 0
    valid[:edge] = valid[-edge:] = False
    valid[:, :edge] = valid[:, -edge:] = False
    footprint = valid & ((mask & plane_bits(planes, ["DETECTED"])) != 0)
    out: dict[str, Any] = {"visit": info.visit, "file": warp_path, "airmass": obs.airmass}
    for name, template in (("dcr", dcr), ("coadd", model.static.astype(np.float64))):
        diff = image - template
        sigma = np.sqrt(variance + model.variance)
        sig = np.where(valid, diff / sigma, 0.0)
        out[f"rms_{name}"] = float(np.sqrt(np.mean(diff[footprint] ** 2))) if footprint.any() else float("nan")
        out[f"false_pos_{name}"], out[f"false_neg_{name}"] = count_detections(sig)
    return out


def colour_check(model: ModelFile, truth_path: str) -> dict[str, Any] | None:
    """Slope and scatter of model vs true log(F_blue/F_red) for bright, isolated stars."""
    t = np.load(truth_path)
    K = model.model.shape[0]
    flux = t[f"star_flux_k{K}"] if f"star_flux_k{K}" in t else t["star_flux"]
    if flux.shape[1] != K:
        return {"skipped": f"truth has {flux.shape[1]} sub-filters, model {K}"}
    ny, nx = model.model.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = 2.5 * float(t["psf_sigma_pixels"])
    true, measured = [], []
    order = np.argsort(flux.sum(axis=1))[::-1]
    for i in order[: max(10, len(order) // 2)]:
        y, x = t["star_y"][i], t["star_x"][i]
        d = np.hypot(t["star_y"] - y, t["star_x"] - x)
        if np.sum(d < 3 * r) > 1:  # a neighbour inside the aperture's reach
            continue
        near = (yy - y) ** 2 + (xx - x) ** 2 < r * r
        blue, red = model.model[0][near].sum(), model.model[-1][near].sum()
        if blue <= 0 or red <= 0:
            continue
        true.append(np.log(flux[i, 0] / flux[i, -1]))
        measured.append(np.log(blue / red))
    if len(true) < 3:
        return {"skipped": "fewer than 3 bright isolated stars"}
    slope, offset = np.polyfit(true, measured, 1)
    scatter = float(np.std(np.asarray(measured) - (slope * np.asarray(true) + offset)))
    return {"stars": len(true), "slope": float(slope), "scatter": scatter}


def evaluate(model_path: str, warps: list[str], truth: str | None = None, edge: int | None = None) -> dict[str, Any]:
    model = read_model(model_path)
    edge = int(model.attrs.get("buffer", 4)) if edge is None else edge
    visits = [evaluate_visit(model, w, edge) for w in warps]
    return {"model": model_path, "visits": visits, "colours": colour_check(model, truth) if truth else None}


def format_table(result: dict[str, Any]) -> str:
    lines = ["visit        airmass   rms(DCR)  rms(coadd)   false +/- (DCR)   false +/- (coadd)   better"]
    for v in result["visits"]:
        better = v["rms_dcr"] < v["rms_coadd"] and (v["false_pos_dcr"] + v["false_neg_dcr"]) <= (
            v["false_pos_coadd"] + v["false_neg_coadd"]
        )
        lines.append(
            f"{v['visit']:<12} {v['airmass']:7.3f}  {v['rms_dcr']:9.3f}  {v['rms_coadd']:10.3f}   "
            f"{v['false_pos_dcr']:5d} / {v['false_neg_dcr']:<5d}     {v['false_pos_coadd']:5d} / "
            f"{v['false_neg_coadd']:<5d}       {'yes' if better else 'NO'}"
        )
    c = result.get("colours")
    if c:
        if "skipped" in c:
            lines.append(f"colours: skipped ({c['skipped']})")
        else:
            lines.append(
                f"colours of {c['stars']} bright stars, model vs truth: slope {c['slope']:.3f}, "
                f"scatter {c['scatter']:.3f} (ln flux ratio, bluest/reddest sub-filter)"
            )
    return "\n".join(lines)


def residual_plot(result: dict[str, Any], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = result["visits"]
    am = [x["airmass"] for x in v]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(am, [x["rms_coadd"] for x in v], "s", label="plain coadd template")
    ax.plot(am, [x["rms_dcr"] for x in v], "o", label="DCR-matched template")
    ax.set_xlabel("airmass")
    ax.set_ylabel("residual RMS in source footprints")
    ax.set_yscale("log")
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
