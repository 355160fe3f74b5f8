"""Variable seeing: the constant-PSF and the PSF-aware model on two GalSim fields, evaluated as
image differencing does it (the numbers of docs/validation.md).

Two fields of 256² pixels, 16 training visits at airmass 1.0–2.0 and 6 held-out science visits,
g band, seeing 0.7–0.8″ and 0.6–1.2″ (Kolmogorov, each visit's PSF in its warp).  For each model:
dipoles removed against the plain coadd (science visits at airmass ≥ 1.2), false sources removed
(airmass > 1.1), the colour slope of bright stars against the truth, the template star flux
against the truth, updates, stop reason, and seconds per iteration.  Writes
OUTDIR/variable_seeing.json and prints a markdown table.

    python benchmarks/variable_seeing.py OUTDIR
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

from mpidcr.analysis.evaluate import evaluate
from mpidcr.cli import main
from mpidcr.sim.simulate import simulate

FIELDS = {"0.7–0.8″": (0.7, 0.8), "0.6–1.2″": (0.6, 1.2)}
VARIANTS = {
    "constant PSF (default)": [],
    "PSF-aware (usePsf)": ["--set", "usePsf=true"],
    "constant PSF, LSST's model weights": ["--set", "lsstCompat.modelWeights=true"],
    "constant PSF, order-3 templates (LSST's)": ["--set", "templateInterpOrder=3"],
}


def run(field: Path, name: str, settings: list[str]) -> dict:
    out = field / f"{name.split()[0]}_{abs(hash(name)) % 10000}.h5"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["-q", "run", str(field / "manifest.toml"), "-o", str(out), "--overwrite", "--json", *settings])
    if code:
        return {"error": code}
    summary = json.loads(buffer.getvalue())
    science = sorted(str(p) for p in (field / "science").glob("*.fits"))
    result = evaluate(str(out), science, str(field / "truth.npz"))
    t, colours = result["totals"], result["colours"] or {}
    return {
        "dipoles_removed": t["dipoles_removed"],
        "false_removed": t["false_removed"],
        "colour_slope": colours.get("slope"),
        "template_flux_bias": result["template_flux"]["bias"],
        "iterations": summary["iterations"],
        "stop": summary["stop_reason"],
        "seconds_per_iteration": summary["seconds"]["solve"] / max(summary["iterations"], 1),
    }


def main_(outdir: str) -> None:
    out = Path(outdir)
    rows = {}
    for label, (lo, hi) in FIELDS.items():
        field = out / f"seeing_{lo}_{hi}"
        if not (field / "manifest.toml").exists():
            simulate(field, size=256, num_visits=16, num_science=6, seeing_fwhm_arcsec=lo, seeing_max_arcsec=hi,
                     seed=11, engine="galsim")  # fmt: skip
        for name, settings in VARIANTS.items():
            rows[f"{label} | {name}"] = run(field, name, settings)
            print(label, name, rows[f"{label} | {name}"], flush=True)
    (out / "variable_seeing.json").write_text(json.dumps(rows, indent=2))
    print("\n| seeing | model | dipoles removed (X ≥ 1.2) | false sources removed (X > 1.1) | colour slope | "
          "template star flux | iterations | s / iteration |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        seeing, name = key.split(" | ")
        if "error" in r:
            print(f"| {seeing} | {name} | error {r['error']} | | | | | |")
            continue
        print(f"| {seeing} | {name} | {100 * r['dipoles_removed']:.0f} % | {100 * r['false_removed']:.0f} % | "
              f"{r['colour_slope']:.2f} | {100 * r['template_flux_bias']:+.2f} % | {r['iterations']} ({r['stop']}) | "
              f"{r['seconds_per_iteration']:.3f} |")


if __name__ == "__main__":
    main_(sys.argv[1] if len(sys.argv) > 1 else "variable_seeing")
