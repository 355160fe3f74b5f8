"""The effect of each difference between ``--profile mpidcr`` and ``--profile lsst`` on one data set
(the numbers of docs/lsst-differences.md).

Simulates one GalSim field (chromatic stars and galaxies, held-out science visits), builds its
model with mpidcr's profile, with LSST's, and with each LSST behaviour switched on alone, and
evaluates every model on the science visits: residual RMS of the DCR-matched template in source
footprints (relative to the plain-coadd template's), false detections, the colour check against
the truth, updates and wall time.  Writes OUTDIR/lsst_differences.json and prints a markdown table.

    python benchmarks/lsst_differences.py OUTDIR [--size 256] [--visits 12] [--science 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from mpidcr.analysis.evaluate import evaluate
from mpidcr.cli import main
from mpidcr.sim.simulate import simulate

BEHAVIOURS = ("refraction", "parallacticAngle", "rotationDirection", "unsplitShifts", "splitNodes", "frequencyRegularization",
              "iterationControl", "subregions", "templates", "modelWeights")  # fmt: skip

#: the rows that compare behaviours shared with LSST's task use mpidcr's constant-PSF model (the
#: PSF-aware one, mpidcr's default where the visits' PSFs differ, has no LSST counterpart)
CONSTANT = ["--set", "usePsf=false"]

#: (name, command-line settings) of every variant
VARIANTS: list[tuple[str, list[str]]] = [
    ("mpidcr (defaults: the PSF-aware model)", []),
    ("mpidcr, constant PSF", CONSTANT),
    ("lsst (all behaviours)", ["--profile", "lsst"]),
    *[(f"mpidcr + lsst {b}", [*CONSTANT, "--set", f"lsstCompat.{b}=true"]) for b in BEHAVIOURS],
    ("lsst without rotationDirection", ["--profile", "lsst", "--set", "lsstCompat.rotationDirection=false"]),
    ("mpidcr, statistic MEANCLIP (the seed's)", [*CONSTANT, "--set", "statistic=MEANCLIP"]),
    ("mpidcr, templateInterpOrder 3 (LSST's)", [*CONSTANT, "--set", "templateInterpOrder=3"]),
]


def run_variant(field: Path, out: Path, settings: list[str], subregion: int) -> dict:
    model = out / "model.h5"
    argv = ["-q", "run", str(field / "manifest.toml"), "-o", str(model), "--overwrite", "--json",
            "--set", f"subregionSize=[{subregion}, {subregion}]", *settings]  # fmt: skip
    buffer = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        return {"error": code}
    summary = json.loads(buffer.getvalue())
    science = sorted(str(p) for p in (field / "science").glob("*.fits"))
    result = evaluate(str(model), science, str(field / "truth.npz"))
    visits = result["visits"]
    colours = result["colours"] or {}
    return {
        "updates": summary["iterations"],
        "stop": summary["stop_reason"],
        "seconds": seconds,
        "rms_dcr": float(np.mean([v["rms_dcr"] for v in visits])),
        "rms_coadd": float(np.mean([v["rms_coadd"] for v in visits])),
        "false_dcr": int(sum(v["false_pos_dcr"] + v["false_neg_dcr"] for v in visits)),
        "colour_slope": colours.get("slope"),
        "colour_scatter": colours.get("scatter"),
    }


def main_(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--visits", type=int, default=12)
    p.add_argument("--science", type=int, default=4)
    p.add_argument("--seed", type=int, default=21)
    args = p.parse_args(argv)
    out = Path(args.outdir)
    field = out / "field"
    if not (field / "manifest.toml").exists():
        simulate(field, size=args.size, num_visits=args.visits, num_science=args.science, seed=args.seed)
    rotation = {fits.getheader(w, 0).get("BORE-ROTANG") for w in (field / "warps").glob("*.fits")}
    rows = {}
    for name, settings in VARIANTS:
        rows[name] = run_variant(field, out, settings, args.size // 2)
        print(name, rows[name], flush=True)
    (out / "lsst_differences.json").write_text(json.dumps({"size": args.size, "visits": args.visits,
                                                            "science": args.science, "rotation": sorted(rotation),
                                                            "rows": rows}, indent=2))  # fmt: skip
    print("\n| variant | RMS DCR / coadd | false det. | colour slope | scatter | updates | s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | error {r['error']} | | | | | |")
            continue
        slope = f"{r['colour_slope']:.3f}" if r["colour_slope"] is not None else "–"
        scatter = f"{r['colour_scatter']:.3f}" if r["colour_scatter"] is not None else "–"
        print(f"| {name} | {r['rms_dcr']:.3f} / {r['rms_coadd']:.3f} | {r['false_dcr']} | {slope} | {scatter} | "
              f"{r['updates']} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main_()
