"""Summaries and quicklook PNGs of a model file (``mpidcr inspect``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.modelfile import ModelFile, read_model


def summary(model: ModelFile) -> dict[str, Any]:
    """Visits, convergence and flux per sub-filter of a model file."""
    a = model.attrs
    v = model.visits
    flux = [float(np.sum(p, dtype=np.float64)) for p in model.model]
    return {
        "file": model.path,
        "shape": list(model.model.shape[1:]),
        "num_subfilters": int(model.model.shape[0]),
        "subfilter_edges_nm": [float(e) for e in a["subfilter_edges"]],
        "iterations": int(a["iterations"]),
        "stop_reason": str(a["stop_reason"]),
        "ranks": int(a["num_ranks"]),
        "tile_grid": [int(t) for t in a["tile_grid"]],
        "flux_per_subfilter": flux,
        "convergence": [
            {"iteration": int(r["iteration"]), "metric": float(r["metric"]), "gain": float(r["gain"])}
            for r in model.convergence
        ],
        "visits": [
            {
                "visit": r["visit"].decode(),
                "airmass": float(r["airmass"]),
                "parallactic_angle": float(r["parallactic_angle"]),
                "weight": float(r["weight"]),
                "max_shift": float(r["max_shift"]),
                "metric": float(r["metric"]),
            }
            for r in v
        ],
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['file']}: {s['shape'][0]}x{s['shape'][1]} pixels, K={s['num_subfilters']} sub-filters "
        f"({', '.join(f'{e:.1f}' for e in s['subfilter_edges_nm'])} nm)",
        f"  {s['iterations']} iterations, stop: {s['stop_reason']}; built on {s['ranks']} rank(s), tiles "
        f"{s['tile_grid'][0]}x{s['tile_grid'][1]}",
        "  flux per sub-filter: " + ", ".join(f"{f:.4g}" for f in s["flux_per_subfilter"]),
        "  convergence: " + ", ".join(f"{c['metric']:.4g}" for c in s["convergence"]),
        f"  {len(s['visits'])} visits:",
        "    visit          airmass  par.angle  weight      max shift  metric",
    ]
    for v in s["visits"]:
        lines.append(
            f"    {v['visit']:<14} {v['airmass']:7.3f}  {v['parallactic_angle']:9.2f}  {v['weight']:10.4g}"
            f"  {v['max_shift']:9.3f}  {v['metric']:.4g}"
        )
    return "\n".join(lines)


def _stretch(x: np.ndarray, soft: float, top: float) -> np.ndarray:
    """asinh stretch: linear below ``soft``, 1 at ``top``."""
    return np.clip(np.arcsinh(np.maximum(x, 0) / soft) / np.arcsinh(top / soft), 0, 1)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def quicklooks(model_path: str, outdir: str) -> list[str]:
    """RGB of the sub-filter planes, the convergence curve and the nImage map, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = read_model(model_path)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(model_path).stem
    paths = []
    planes = model.model
    K = planes.shape[0]
    finite = np.isfinite(model.variance)
    noise = float(np.median(np.sqrt(model.variance[finite]))) / K if finite.any() else 1.0
    top = float(np.percentile(planes.mean(axis=0), 99.8)) or 1.0
    soft = max(3.0 * noise, top / 300.0)
    rgb = np.stack([_stretch(planes[i], soft, top) for i in (-1, K // 2, 0)], axis=-1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(rgb, origin="lower")
    ax.set_title(f"sub-filters as RGB (red = reddest of {K})")
    paths.append(_save(fig, out / f"{stem}_rgb.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    c = model.convergence
    ax.semilogy(c["iteration"], c["metric"], "o-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("convergence metric")
    ax.set_title(f"stop: {model.attrs['stop_reason']}")
    paths.append(_save(fig, out / f"{stem}_convergence.png"))

    if model.nimage_total is not None:  # (written with doNImage)
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(model.nimage_total, origin="lower", cmap="viridis")
        fig.colorbar(im, ax=ax, label="inputs (summed over sub-filters)")
        ax.set_title("nImage")
        paths.append(_save(fig, out / f"{stem}_nimage.png"))
    return paths
