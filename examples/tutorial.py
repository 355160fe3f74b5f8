"""The tutorial (docs/tutorial.md) as a script: simulate a field, build its DCR model on 2 ranks,
make templates for the held-out science visits and difference them, with figures.

    python examples/tutorial.py OUTDIR [--size 160] [--ranks 2]

Writes OUTDIR/field/ (warps, science visits, truth), OUTDIR/model.h5 and OUTDIR/figures/*.png,
and prints what it finds.  `make docs` runs it for the figures of the documentation site; the
test suite runs it small (tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. a field with known truth: 12 warps of one patch over airmass 1–2, and 2 held-out visits
    from mpidcr.sim.simulate import simulate

    field = out / "field"
    if not (field / "manifest.toml").exists():
        simulate(field, size=args.size, num_visits=12, num_science=2, seed=4, engine="numpy")

    # 2. its DCR model on 2 ranks (as on a cluster: mpiexec -n 2 mpidcr run ...)
    model_path = out / "model.h5"
    mpiexec = shutil.which("mpiexec")
    command = [sys.executable, "-m", "mpidcr", "-q", "run", str(field / "manifest.toml"), "-o", str(model_path),
               "--overwrite"]  # fmt: skip
    if mpiexec and args.ranks > 1:
        command = [mpiexec, "-n", str(args.ranks), *command]
    subprocess.run(command, check=True)

    # 3. the model from Python
    import mpidcr

    model = mpidcr.open_model(model_path)
    print(f"{model.planes.shape[0]} sub-filters over {model.subfilter_edges[0]:.0f}–{model.subfilter_edges[-1]:.0f} nm, "
          f"{len(model.visits)} visits, {int(model.attrs['iterations'])} iterations on {int(model.attrs['num_ranks'])} ranks")

    # 4. templates for the science visits, and their differences
    science = sorted((field / "science").glob("*.fits"))
    results = {}
    from astropy.io import fits

    for path in science:
        with fits.open(path) as hdul:
            image = hdul["IMAGE"].data.astype(np.float64)
            detected = (hdul["MASK"].data & (1 << int(hdul["MASK"].header["MP_DETECTED"]))) != 0
        template = model.template(path)  # an astropy CCDData on the visit's grid
        dcr = image - template.data
        coadd = image - model.static  # the plain coadd as the template
        inner = np.zeros_like(detected)
        inner[8:-8, 8:-8] = True
        rms = {name: float(np.sqrt(np.mean(d[detected & inner] ** 2))) for name, d in (("dcr", dcr), ("coadd", coadd))}
        results[path.name] = {"airmass": float(template.meta["airmass"]), **rms}
        print(f"{path.name}: airmass {template.meta['airmass']:.2f}, residual RMS in sources: DCR template "
              f"{rms['dcr']:.3f}, plain coadd {rms['coadd']:.3f}")
    figures(model, science, out / "figures")
    return results


def figures(model, science: list[Path], where: Path) -> None:
    """The sub-filter planes, and the science visit at the highest airmass with both differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.io import fits

    where.mkdir(parents=True, exist_ok=True)
    K = model.planes.shape[0]
    fig, axes = plt.subplots(1, K, figsize=(3 * K, 3))
    for k, ax in enumerate(axes):
        lo, hi = model.subfilter_edges[k], model.subfilter_edges[k + 1]
        ax.imshow(model.planes[k], origin="lower", cmap="gray", vmin=-0.5, vmax=np.percentile(model.planes[k], 99.5))
        ax.set_title(f"sub-filter {k}: {lo:.0f}–{hi:.0f} nm", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(where / "subfilters.png", dpi=80)
    plt.close(fig)

    airmass = [float(fits.getheader(p, 0)["BORE-AIRMASS"]) for p in science]
    path = science[int(np.argmax(airmass))]
    image = fits.getdata(path, "IMAGE").astype(np.float64)
    noise = float(np.sqrt(np.median(fits.getdata(path, "VARIANCE"))))
    template = model.template(path)
    panels = [("science", image), ("science − DCR template", image - template.data),
              ("science − plain coadd", image - model.static)]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    scale = 5 * noise  # ±5σ of the science visit's noise
    for ax, (title, data) in zip(axes, panels, strict=True):
        limits = (-0.5, np.percentile(image, 99.5)) if title == "science" else (-scale, scale)
        ax.imshow(data, origin="lower", cmap="gray", vmin=limits[0], vmax=limits[1])
        ax.set_title(f"{title} (airmass {max(airmass):.2f})" if title == "science" else title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(where / "differences.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
