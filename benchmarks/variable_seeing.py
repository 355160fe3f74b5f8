"""Variable seeing: the constant-PSF and the PSF-aware model on two GalSim fields, evaluated as
image differencing does it (the numbers of docs/validation.md).

Fields of 256² pixels (one per seed and seeing range), 16 training visits at airmass 1.0–2.0 and 6 held-out science visits,
g band, seeing 0.7–0.8″ and 0.6–1.2″ (Kolmogorov, each visit's PSF in its warp).  For each model:
dipoles removed against the plain coadd (science visits at airmass ≥ 1.2), false sources removed
(airmass > 1.1), the colour slope of bright stars against the truth, the template star flux
against the science visits' noiseless images (3-FWHM apertures; ±0.05 % per visit), updates, stop reason, seconds per iteration, and the dipoles and false sources
removed when a kernel fitted to the images does the PSF matching (as LSST's differencing).  Writes
OUTDIR/variable_seeing.json and prints a markdown table.

    python benchmarks/variable_seeing.py OUTDIR [--seeds 11 12 13] [--variants NAME ...]

With several seeds, each seeing range has one field per seed and every number is pooled over
their science visits (one 256² field holds ~30 bright stars: the fractions move by up to ±10
points from field to field).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from mpidcr.analysis.evaluate import evaluate, totals
from mpidcr.cli import main
from mpidcr.sim.simulate import simulate

FIELDS = {"0.7–0.8″": (0.7, 0.8), "0.6–1.2″": (0.6, 1.2)}
CUBIC = ["--set", "imageInterpOrder=3", "--set", "templateInterpOrder=3"]
THIRTY = ["--set", "maxNumIter=30", "--set", "useConvergence=false"]
AWARE = ["--set", "usePsf=true"]
CONSTANT = ["--set", "usePsf=false"]
VARIANTS = {
    "defaults (PSF-aware: one wing, 45 iterations)": [],
    "constant PSF (usePsf=false)": CONSTANT,
    "constant PSF, 30 iterations": [*CONSTANT, *THIRTY],
    "constant PSF, 45 iterations": [*CONSTANT, "--set", "maxNumIter=45", "--set", "useConvergence=false"],
    "PSF-aware, one Gaussian kernel (psfWings=0)": [*AWARE, "--set", "psfWings=0"],
    "PSF-aware, two wings (psfWings=2)": [*AWARE, "--set", "psfWings=2"],
    "PSF-aware, 30 iterations": [*AWARE, "--set", "maxNumIter=30"],
    "PSF-aware, 9 iterations (LSST's 3K)": [*AWARE, "--set", "maxNumIter=9"],
    "constant PSF, LSST's split nodes": [*CONSTANT, "--set", "lsstCompat.splitNodes=true"],
    "constant PSF, K = 5, cubic shifts, 30 iterations": [*CONSTANT, "--set", "dcrNumSubfilters=5", *CUBIC, *THIRTY],
    "PSF-aware, K = 5, cubic shifts": [*AWARE, "--set", "dcrNumSubfilters=5", *CUBIC],
}


def run(field: Path, name: str, settings: list[str]) -> dict:
    """One model of one field, evaluated with the known PSFs and with fitted kernels."""
    out = field / f"{name.split()[0]}_{abs(hash(name)) % 10000}.h5"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["-q", "run", str(field / "manifest.toml"), "-o", str(out), "--overwrite", "--json", *settings])
    if code:
        return {"error": code}
    summary = json.loads(buffer.getvalue())
    science = sorted(str(p) for p in (field / "science").glob("*.fits"))
    result = evaluate(str(out), science, str(field / "truth.npz"))
    fitted = evaluate(str(out), science, str(field / "truth.npz"), matching="fitted")
    return {
        "visits": result["visits"],
        "visits_fitted": fitted["visits"],
        "colour_slope": (result["colours"] or {}).get("slope"),
        "template_flux_bias": result["template_flux"]["bias"],
        "iterations": summary["iterations"],
        "stop": summary["stop_reason"],
        "seconds_per_iteration": summary["seconds"]["solve"] / max(summary["iterations"], 1),
    }


def pooled(runs: list[dict]) -> dict:
    """The runs of one model on several fields: dipoles and false sources removed over all their
    science visits together (known PSFs and fitted kernels), the mean colour slope, the median
    template flux bias, the iterations and stop reasons, the mean seconds per iteration."""
    if any("error" in r for r in runs):
        return {"error": next(r["error"] for r in runs if "error" in r)}
    known = totals([v for r in runs for v in r["visits"]])
    fitted = totals([v for r in runs for v in r["visits_fitted"]])
    return {
        "dipoles_removed": known["dipoles_removed"],
        "false_removed": known["false_removed"],
        "dipoles_removed_fitted": fitted["dipoles_removed"],
        "false_removed_fitted": fitted["false_removed"],
        "colour_slope": float(np.mean([r["colour_slope"] for r in runs])),
        "template_flux_bias": float(np.median([r["template_flux_bias"] for r in runs])),
        "iterations": "/".join(str(r["iterations"]) for r in runs),
        "stop": "/".join(sorted({r["stop"] for r in runs})),
        "seconds_per_iteration": float(np.mean([r["seconds_per_iteration"] for r in runs])),
    }


def field_for(out: Path, lo: float, hi: float, seed: int, profile: str = "kolmogorov") -> Path:
    field = out / (f"seeing_{lo}_{hi}" if seed == 11 else f"seeing_{lo}_{hi}_seed{seed}")
    if profile != "kolmogorov":
        field = field.with_name(f"{field.name}_{profile}")
    if not (field / "manifest.toml").exists():
        simulate(field, size=256, num_visits=16, num_science=6, seeing_fwhm_arcsec=lo, seeing_max_arcsec=hi,
                 seed=seed, engine="galsim", seeing_profile=profile)  # fmt: skip
    return field


def main_(outdir: str, seeds: list[int], variants: list[str], profile: str = "kolmogorov") -> None:
    out = Path(outdir)
    rows = {}
    for label, (lo, hi) in FIELDS.items():
        fields = [field_for(out, lo, hi, seed, profile) for seed in seeds]
        for name in variants:
            rows[f"{label} | {name}"] = pooled([run(field, name, VARIANTS[name]) for field in fields])
            print(label, name, rows[f"{label} | {name}"], flush=True)
    (out / "variable_seeing.json").write_text(json.dumps(rows, indent=2))
    print(f"\nseeds {', '.join(map(str, seeds))}, {profile} seeing")
    print(
        "| seeing | model | dipoles removed (X ≥ 1.2) | false sources removed (X > 1.1) | colour slope | "
        "template star flux | iterations | s / iteration | fitted kernel: dipoles, false sources removed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        seeing, name = key.split(" | ")
        if "error" in r:
            print(f"| {seeing} | {name} | error {r['error']} | | | | | | |")
            continue
        print(
            f"| {seeing} | {name} | {100 * r['dipoles_removed']:.0f} % | {100 * r['false_removed']:.0f} % | "
            f"{r['colour_slope']:.2f} | {100 * r['template_flux_bias']:+.2f} % | {r['iterations']} ({r['stop']}) | "
            f"{r['seconds_per_iteration']:.3f} | {100 * r['dipoles_removed_fitted']:.0f} %, "
            f"{100 * r['false_removed_fitted']:.0f} % |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11],
                        help="simulation seeds: one field per seed and seeing range, pooled (default 11)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME",
                        help="models to build (default all)")
    parser.add_argument("--seeing-profile", choices=("kolmogorov", "gaussian"), default="kolmogorov",
                        help="the fields' seeing (gaussian: the PSF-aware model's matching kernels are exact)")
    args = parser.parse_args()
    main_(args.outdir, args.seeds, args.variants, args.seeing_profile)
