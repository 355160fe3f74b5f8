"""Artifact rejection on simulated fields: what is caught, what is spared, what reaches the model.

    python benchmarks/artifact_rejection.py OUT [--size 256] [--visits 12] [--cosmic-rays 10]
                                                [--satellites 0.25] [--seed 5] [--engine galsim]

Simulates one field twice with the same seed — clean, and with cosmic rays in every warp and
satellite trails in a share of them — and builds models of both with several settings.  For each:
the share of artifact (and trail) pixels rejected, the share of source-footprint pixels rejected
(on the clean field: every one is a false rejection), the largest difference along the trail paths
between the model and the clean field's model (planes in units of their noise √(K·coadd
variance), the static model in units of its own), the ≥ 5σ footprints on trail paths of the PSF-matched
differences of the science visits (and of the clean model's), and the dipoles and false sources of those differences
(``mpidcr evaluate``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np

from mpidcr.analysis import artifacts as check
from mpidcr.analysis.evaluate import evaluate
from mpidcr.cli import main
from mpidcr.sim.simulate import simulate

VARIANTS: list[tuple[str, list[str]]] = [
    ("mpidcr (default)", []),
    ("no rejection", ["--set", "doRejectArtifacts=false"]),
    ("rejected pixels kept in the fit (LSST's fit)", ["--set", "lsstCompat.clippedInFit=true"]),
    ("LSST's candidates and epoch count", ["--set", "lsstCompat.artifactDetection=true"]),
    ("LSST's candidates, preserving sources (LSST defaults)",
     ["--set", "lsstCompat.artifactDetection=true", "--set", "doPreserveContainedBySource=true",
      "--set", "doFilterMorphological=false"]),
    ("no streak masking", ["--set", "doFilterMorphological=false"]),
    ("streaks grown by 2 PSF sigma", ["--set", "growStreakFp=2"]),
    ("streaks grown by 1 PSF sigma", ["--set", "growStreakFp=1"]),
]


def run(manifest: Path, output: Path, settings: list[str]) -> tuple[dict, float]:
    argv = ["-q", "run", str(manifest), "-o", str(output), "--overwrite", "--json", *settings]
    buffer = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"mpidcr run {' '.join(settings)} failed with {code}")
    return json.loads(buffer.getvalue()), time.perf_counter() - t0


def main_(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--visits", type=int, default=12)
    p.add_argument("--cosmic-rays", type=int, default=10)
    p.add_argument("--satellites", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--engine", default="galsim", choices=["galsim", "numpy"])
    args = p.parse_args(argv)
    out = Path(args.outdir)
    fields = {"clean": out / "clean", "artifacts": out / "artifacts"}
    for name, where in fields.items():
        if not (where / "manifest.toml").exists():
            simulate(where, size=args.size, num_visits=args.visits, num_science=2, seed=args.seed, engine=args.engine,
                     cosmic_rays=args.cosmic_rays if name == "artifacts" else 0,
                     satellite_fraction=args.satellites if name == "artifacts" else 0.0)  # fmt: skip
    truth = dict(np.load(fields["artifacts"] / "truth.npz"))
    clean_truth = {"artifacts": np.zeros_like(truth["artifacts"])}
    paths = check.trail_paths(truth)
    science = sorted(str(s) for s in (fields["artifacts"] / "science").glob("*.fits"))
    detected = check.warp_detected(sorted(str(w) for w in (fields["clean"] / "warps").glob("*.fits")))
    rows = {}
    for label, settings in VARIANTS:
        reference = out / f"clean-{len(rows)}.h5"
        run(fields["clean"] / "manifest.toml", reference, settings)
        model = out / f"artifacts-{len(rows)}.h5"
        summary, seconds = run(fields["artifacts"] / "manifest.toml", model, settings)
        row: dict = {"seconds": seconds, "iterations": summary["iterations"]}
        if "doRejectArtifacts=false" not in settings:
            visits, masks = check.rejected_masks(str(model))
            row.update(check.caught(masks, visits, truth))
            cvisits, cmasks = check.rejected_masks(str(reference))
            row["clean_source_pixels_clipped"] = check.caught(cmasks, cvisits, clean_truth,
                                                              [detected[v] for v in cvisits])["source_pixels_clipped"]
        row.update(check.compare_on(paths, str(model), str(reference)))
        row.update({f"trail_{k}": v for k, v in check.detections_on(paths, str(model), str(reference), science).items()})
        totals = evaluate(str(model), science)["totals"]
        row["dipoles_dcr"], row["false_dcr"] = totals.get("dipoles_dcr"), totals.get("false_dcr")
        rows[label] = row
        print(label, json.dumps(row), flush=True)
    (out / "artifact_rejection.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("\n| variant | caught (trails) | source px clipped, clean field | planes on trails, max σ (>3σ) "
          "| static on trails, max σ | ≥5σ footprints on trails (clean model) | Δ significance on trails, max |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        caught = f"{r['caught']:.4f} ({r['trail_caught']:.4f})" if "caught" in r else "–"
        clean = f"{r['clean_source_pixels_clipped']:.4f}" if "clean_source_pixels_clipped" in r else "–"
        print(f"| {label} | {caught} | {clean} | {r['planes_max']:.2f} ({r['planes_over_3']}) | {r['static_max']:.2f} | "
              f"{r['trail_footprints']} ({r['trail_footprints_reference']}) | {r['trail_max_change_sigma']:.2f} |")


if __name__ == "__main__":
    main_()
