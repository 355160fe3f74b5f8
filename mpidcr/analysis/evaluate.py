"""Science evaluation of a model: DCR-matched vs plain-coadd templates on held-out visits.

For each science warp, as image differencing does it: template and science are PSF-matched
(:mod:`.matching`), then the difference image against the DCR-matched template and against the
static sky model (the plain coadd) gives the residual RMS inside the warp's source footprints
(``DETECTED``), the dipoles (a positive and a negative ≥5σ footprint that touch: a misplaced
source) and the other ≥5σ footprints — on simulated data every one of them is false.  With a truth file, sub-filter colours of bright
stars are compared with the truth (slope and scatter of model vs true
log flux ratio between the bluest and reddest sub-filters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError
from ..io.modelfile import ModelFile, read_model
from ..io.products import honest_variance, observation_for_warp, template_at, template_config
from ..io.psf import visit_psf
from ..io.warps import read_window
from ..masks import plane_bits
from ..psf import Psf, fwhm_pixels
from ..tiling import Box
from .matching import MatchedPair, false_sources, match_fitted, match_known

DETECTION_SIGMA = 5.0
#: how template and science are brought to one PSF: the kernel between their known PSFs (a
#: fitted one where a PSF is unknown), or always a kernel fitted to the images
MATCHING = ("known", "fitted")


def count_detections(significance: NDArray, threshold: float = DETECTION_SIGMA) -> tuple[int, int]:
    """(positive, negative) 8-connected footprints with |significance| ≥ threshold."""
    eight = np.ones((3, 3), dtype=bool)
    pos = ndimage.label(significance >= threshold, structure=eight)[1]
    neg = ndimage.label(significance <= -threshold, structure=eight)[1]
    return int(pos), int(neg)


def _valid_pixels(model: ModelFile, image: NDArray, mask: NDArray, planes: dict[str, int], edge: int) -> NDArray:
    bad = plane_bits(planes, ["NO_DATA", "BAD", "SAT"])
    valid = ((mask & bad) == 0) & np.isfinite(image)
    if model.nimage_total is not None:
        valid &= model.nimage_total > 0
    valid[:edge] = valid[-edge:] = False
    valid[:, :edge] = valid[:, -edge:] = False
    return valid


def evaluate_visit(model: ModelFile, warp_path: str, edge: int, psf_match: bool = True,
                   stars: tuple[NDArray, NDArray, NDArray] | None = None, matching: str = "known",
                   noiseless: dict[str, NDArray] | None = None) -> dict[str, Any]:  # fmt: skip
    """One science warp against the DCR-matched template and the plain coadd: PSF-matched first
    unless ``psf_match`` is off — with the known PSFs (``matching`` "known", a fitted kernel where
    they are unknown) or always with a kernel fitted to the two images (``matching`` "fitted", as
    LSST's image differencing does); residual RMS in the warp's source footprints, dipoles and
    other ≥5σ false sources of each difference; with the true ``stars`` (y, x, flux), the DCR
    template's star flux against the science visit's — against its image before the noise
    (``noiseless[visit id]``, a simulation's, blurred with the science image's kernel) where given,
    which leaves only the template's own noise in the comparison."""
    if matching not in MATCHING:
        raise ValueError(f"matching {matching!r}: one of {', '.join(MATCHING)}")
    cfg = template_config(model)
    info, obs = observation_for_warp(warp_path, cfg=cfg)
    ny, nx = model.model.shape[1:]
    if info.shape != (ny, nx):
        raise InputError(f"{warp_path}: shape {info.shape[0]}x{info.shape[1]} differs from the model's {ny}x{nx} "
                         f"({model.path}); evaluate needs science warps on the model's patch grid")  # fmt: skip
    planes = dict(info.mask_planes)
    image, variance, mask = read_window(info, Box(0, ny, 0, nx), planes)
    image, variance = image.astype(np.float64), variance.astype(np.float64)
    science_psf = visit_psf(info, float(model.attrs["pixel_scale"])) if psf_match else None
    fitted = matching == "fitted"
    dcr, dcr_psf = template_at(model, obs, psf=None if fitted else science_psf)
    valid = _valid_pixels(model, image, mask, planes, edge)
    if not valid.any():
        raise InputError(f"{warp_path}: no usable pixel to difference (all masked, NaN, or where the model has no data)")
    footprint = valid & ((mask & plane_bits(planes, ["DETECTED"])) != 0)
    out: dict[str, Any] = {"visit": info.visit, "file": warp_path, "airmass": obs.airmass}
    templates = (("dcr", dcr, dcr_psf), ("coadd", model.static.astype(np.float64), model.psf_static))
    for name, template, t_psf in templates:
        pair = _matched(model, template, None if fitted else t_psf, image, variance, science_psf, valid, psf_match)
        diff = pair.science - pair.template
        sig = np.where(valid, diff / np.sqrt(pair.variance), 0.0)
        out[f"rms_{name}"] = float(np.sqrt(np.mean(diff[footprint] ** 2))) if footprint.any() else float("nan")
        out[f"dipoles_{name}"], out[f"other_{name}"] = false_sources(sig, DETECTION_SIGMA)
        out[f"false_pos_{name}"], out[f"false_neg_{name}"] = count_detections(sig)
        out[f"matching_{name}"] = pair.how
        if name == "dcr" and stars is not None:
            fwhm = fwhm_pixels(science_psf.image) if science_psf is not None else 4.0
            truth_image = (noiseless or {}).get(str(info.visit))
            reference = pair.science if truth_image is None else pair.science_like(truth_image.astype(np.float64))
            out["star_flux_reference"] = "science" if truth_image is None else "noiseless"
            out["star_flux_dcr"], out["star_count"] = star_flux_ratio(pair.template, reference, stars, 3.0 * fwhm)
    return out


def _matched(model: ModelFile, template: NDArray, t_psf: NDArray | None, image: NDArray, variance: NDArray,
             science_psf: Psf | None, valid: NDArray, psf_match: bool = True) -> MatchedPair:  # fmt: skip
    """Template and science on one PSF: the exact kernel between known PSFs, else a fitted one."""
    t_var = honest_variance(template, model.variance.astype(np.float64), model.mask, model.mask_planes)[0]
    if not psf_match:
        return MatchedPair(template, image, variance + t_var, "none (--no-psf-match)")
    if science_psf is not None and t_psf is not None:
        return match_known(template, t_var, t_psf, image, variance, science_psf.image)
    return match_fitted(template, t_var, image, variance, valid)


def difference_significance(model: ModelFile, warp_path: str, edge: int) -> NDArray[np.float64]:
    """(science − DCR-matched template) / σ, PSF-matched as :func:`evaluate_visit` does; 0 where
    not valid (masked, NaN, within ``edge`` of the patch's edge)."""
    info, obs = observation_for_warp(warp_path, cfg=template_config(model))
    ny, nx = model.model.shape[1:]
    image, variance, mask = read_window(info, Box(0, ny, 0, nx), dict(info.mask_planes))
    image, variance = image.astype(np.float64), variance.astype(np.float64)
    science_psf = visit_psf(info, float(model.attrs["pixel_scale"]))
    template, t_psf = template_at(model, obs, psf=science_psf)
    valid = _valid_pixels(model, image, mask, dict(info.mask_planes), edge)
    pair = _matched(model, template, t_psf, image, variance, science_psf, valid)
    return np.where(valid, (pair.science - pair.template) / np.sqrt(pair.variance), 0.0)


def star_flux_ratio(template: NDArray, science: NDArray, stars: tuple[NDArray, NDArray, NDArray],
                    radius: float) -> tuple[float, int]:  # fmt: skip
    """Median template / science flux of bright isolated stars, in apertures of ``radius`` pixels
    less the mean of an annulus around them times the aperture's pixels (both images on one PSF;
    the mean rather than the median: linear in the image, so noise leaves it unbiased);
    (ratio − 1, stars)."""
    ys, xs, flux = stars
    ny, nx = science.shape
    ratios = []
    for i in np.argsort(flux)[::-1][: max(10, len(flux) // 2)]:
        y, x = float(ys[i]), float(xs[i])
        if not (radius + 4 < y < ny - radius - 4 and radius + 4 < x < nx - radius - 4):
            continue
        if np.count_nonzero(np.hypot(ys - y, xs - x) < radius + 6.0) > 1:
            continue
        y0, y1, x0, x1 = int(y - radius - 4), int(y + radius + 5), int(x - radius - 4), int(x + radius + 5)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(yy - y, xx - x)
        inside, ring = r < radius, (r >= radius) & (r < radius + 3)
        fluxes = []
        for image in (template, science):
            stamp = image[y0:y1, x0:x1]
            fluxes.append(float(stamp[inside].sum()) - float(np.mean(stamp[ring])) * inside.sum())
        if fluxes[1] > 0:
            ratios.append(fluxes[0] / fluxes[1])
    if len(ratios) < 3:
        return float("nan"), len(ratios)
    return float(np.median(ratios)) - 1.0, len(ratios)


#: what a truth file must hold (``mpidcr simulate``'s truth.npz)
TRUTH_KEYS = ("star_y", "star_x", "star_flux", "psf_sigma_pixels")


def read_truth(path: str) -> dict[str, NDArray]:
    """The arrays of a truth file of ``mpidcr simulate``; InputError naming the file if it is
    missing, not an .npz of arrays, or lacks the stars."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # (an .npz is a zip archive)
                raise InputError(f"{path}: not a truth file of 'mpidcr simulate' (not an .npz archive)")
        with np.load(path, allow_pickle=False) as t:
            arrays = {key: np.asarray(t[key]) for key in t.files}
    except FileNotFoundError:
        raise InputError(f"{path}: truth file not found") from None
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a truth file of 'mpidcr simulate' ({str(exc).splitlines()[0]})") from None
    missing = [key for key in TRUTH_KEYS if key not in arrays]
    if missing:
        raise InputError(f"{path}: not a truth file of 'mpidcr simulate' (no {', '.join(missing)})")
    return arrays


def colour_check(model: ModelFile, truth_path: str) -> dict[str, Any] | None:
    """Slope and scatter of model vs true log(F_blue/F_red) for bright, isolated stars."""
    t = read_truth(truth_path)
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


def evaluate(model_path: str, warps: list[str], truth: str | None = None, edge: int | None = None,
             psf_match: bool = True, matching: str = "known") -> dict[str, Any]:  # fmt: skip
    """Every science warp's numbers, the totals, and with a truth file the colours and the
    template star flux (``matching``: see :func:`evaluate_visit`)."""
    model = read_model(model_path)
    edge = int(model.attrs.get("buffer", 4)) if edge is None else edge
    stars = None
    clean: dict[str, NDArray] = {}
    if truth:
        t = read_truth(truth)
        flux = np.asarray(t["star_total"]) if "star_total" in t else np.asarray(t["star_flux"]).sum(axis=1)
        stars = (np.asarray(t["star_y"]), np.asarray(t["star_x"]), flux)
        clean = {key.removeprefix("noiseless_"): t[key] for key in t if key.startswith("noiseless_")}
    visits = [evaluate_visit(model, w, edge, psf_match, stars, matching, clean) for w in warps]
    result: dict[str, Any] = {"model": model_path, "visits": visits, "totals": totals(visits),
                              "colours": colour_check(model, truth) if truth else None}  # fmt: skip
    if truth:
        values = [v["star_flux_dcr"] for v in visits if np.isfinite(v.get("star_flux_dcr", np.nan))]
        kinds = {v.get("star_flux_reference") for v in visits} - {None}
        result["template_flux"] = {"bias": float(np.median(values)) if values else float("nan"),
                                   "per_visit": [v.get("star_flux_dcr") for v in visits],
                                   "reference": "noiseless" if kinds == {"noiseless"} else "science"}  # fmt: skip
    return result


#: the airmass above which the totals count dipoles and false sources
DIPOLE_AIRMASS, FALSE_AIRMASS = 1.2, 1.1


def totals(visits: list[dict[str, Any]]) -> dict[str, Any]:
    """Dipoles removed against the plain coadd (visits at airmass ≥ 1.2) and false sources removed
    (dipoles and others, airmass > 1.1): 1 − DCR / coadd."""

    def removed(kind: str, keep: Any) -> float:
        chosen = [v for v in visits if keep(v["airmass"])]
        dcr = sum(v[f"{k}_dcr"] for v in chosen for k in kind.split("+"))
        coadd = sum(v[f"{k}_coadd"] for v in chosen for k in kind.split("+"))
        return float(1.0 - dcr / coadd) if coadd else float("nan")

    return {
        "dipoles_removed": removed("dipoles", lambda a: a >= DIPOLE_AIRMASS),
        "false_removed": removed("dipoles+other", lambda a: a > FALSE_AIRMASS),
        "dipoles_dcr": sum(v["dipoles_dcr"] for v in visits),
        "dipoles_coadd": sum(v["dipoles_coadd"] for v in visits),
        "other_dcr": sum(v["other_dcr"] for v in visits),
        "other_coadd": sum(v["other_coadd"] for v in visits),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = ["visit        airmass   rms(DCR)  rms(coadd)   dipoles DCR/coadd   other DCR/coadd   matching (DCR)"]
    for v in result["visits"]:
        lines.append(
            f"{v['visit']:<12} {v['airmass']:7.3f}  {v['rms_dcr']:9.3f}  {v['rms_coadd']:10.3f}   "
            f"{v['dipoles_dcr']:7d} / {v['dipoles_coadd']:<7d}   {v['other_dcr']:5d} / {v['other_coadd']:<7d}  "
            f"{v['matching_dcr']}"
        )
    t = result.get("totals")
    if t:
        lines.append(
            f"total: dipoles {t['dipoles_dcr']} / {t['dipoles_coadd']}, other false sources {t['other_dcr']} / "
            f"{t['other_coadd']}; removed against the plain coadd: dipoles {100 * t['dipoles_removed']:.0f} % "
            f"(airmass >= {DIPOLE_AIRMASS}), false sources {100 * t['false_removed']:.0f} % (airmass > {FALSE_AIRMASS})"
        )
    f = result.get("template_flux")
    if f:
        against = "noiseless images" if f.get("reference") == "noiseless" else "images"
        lines.append(f"template star flux against the science visits' {against}: {100 * f['bias']:+.2f} % "
                     "(median over visits)")  # fmt: skip
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
