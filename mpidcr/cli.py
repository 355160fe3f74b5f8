"""The ``mpidcr`` command line: ``main(argv) -> int``, one subcommand per task.

Every :class:`~mpidcr.errors.MpidcrError` becomes a one-line ``mpidcr: error: …``
on stderr and exit code 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import MpidcrError

if TYPE_CHECKING:
    from .parallel.comm import Comm

log = logging.getLogger("mpidcr")


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``--json`` output: strict JSON (NaN and infinities, which Python's json writes as bare
    NaN/Infinity and jq and most parsers refuse, become null), indented."""
    return json.dumps(_finite_or_none(value), indent=2, allow_nan=False)


def _add_config(sub: argparse._SubParsersAction) -> None:
    """The ``config`` subcommand's arguments."""
    c = sub.add_parser(
        "config",
        help="show, check or document the configuration",
        description="Print the configuration resolved from FILE and --set overrides, or every field's default.",
    )
    c.add_argument("file", nargs="?", help="TOML, YAML or LSST-style .py override file")
    c.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a field (repeatable)")
    c.add_argument("--defaults", action="store_true", help="list every field with type, default, status and doc")
    c.add_argument("--markdown", action="store_true", help="with --defaults: a Markdown table (docs/config.md)")
    c.add_argument("--json", action="store_true", help="print the resolved configuration as JSON")
    c.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    from .config import defaults_table
    from .io.configfile import load_config

    if args.defaults:
        sys.stdout.write(defaults_table(markdown=args.markdown))
        return 0
    cfg = load_config(args.file, args.set or [])
    cfg.validate(require_band=False)
    if args.json:
        print(json.dumps(cfg.as_dict(), indent=2, sort_keys=True))
    else:
        for k, v in cfg.as_dict().items():
            print(f"{k} = {v!r}")
    return 0


def _shift_observation(args: argparse.Namespace):
    """The Observation ``mpidcr shifts`` describes (weather defaults: a standard atmosphere)."""
    from .dcr import (
        Observation,
        Site,
        Weather,
        check_elevation,
        elevation_from_airmass,
        parallactic_angle_from_altaz,
        parallactic_angle_lsst,  # fmt: skip
        physical_problem,
    )

    for name in ("latitude", "longitude", "height", "temperature", "pressure", "humidity"):
        value = getattr(args, name)
        problem = None if value is None else physical_problem(name, value)
        if problem:
            raise MpidcrError(f"--{name} = {value:g}{problem}")
    rubin = Site()  # the default site: each coordinate not given is Rubin's
    site = Site(latitude=rubin.latitude if args.latitude is None else args.latitude,
                longitude=rubin.longitude if args.longitude is None else args.longitude,
                height=rubin.height if args.height is None else args.height)  # fmt: skip
    if args.elevation is None and args.airmass is None:
        raise MpidcrError("give --elevation or --airmass")
    elevation = args.elevation if args.elevation is not None else elevation_from_airmass(args.airmass)
    check_elevation(elevation)
    if args.azimuth is not None and args.parallactic_angle is not None:
        raise MpidcrError("give --parallactic-angle or --azimuth, not both")
    if args.azimuth is None:
        angle = args.parallactic_angle or 0.0
    elif args.profile == "lsst":
        angle = parallactic_angle_lsst(args.azimuth, elevation, site, args.mjd, "utc")
    else:
        angle = float(parallactic_angle_from_altaz(args.azimuth, elevation, site.latitude))
    std = Weather.standard(site.height)
    weather = Weather(
        temperature=std.temperature if args.temperature is None else args.temperature,
        pressure=std.pressure if args.pressure is None else args.pressure,
        humidity=std.humidity if args.humidity is None else args.humidity,
    )
    return Observation(elevation, angle, args.rotation_angle, weather, site)


def _add_shifts(sub: argparse._SubParsersAction) -> None:
    """The ``shifts`` subcommand's arguments."""
    s = sub.add_parser(
        "shifts",
        help="DCR shifts of the sub-filters for one visit",
        description="Print the per-sub-filter DCR shift (dy, dx) in pixels of one visit.",
    )
    s.add_argument("--wavelength", type=float, required=True, help="effective wavelength of the band, nm")
    s.add_argument("--bandwidth", type=float, required=True, help="bandwidth, nm")
    s.add_argument("--subfilters", type=int, default=3, help="number of sub-filters K (default 3)")
    s.add_argument("--elevation", type=float, help="elevation of the field, deg")
    s.add_argument("--airmass", type=float, help="airmass (instead of --elevation)")
    s.add_argument("--parallactic-angle", type=float, help="deg (default 0, or from --azimuth)")
    s.add_argument("--azimuth", type=float, help="azimuth of the field, deg (north through east): the parallactic "
                   "angle is computed from it, the elevation and the site")  # fmt: skip
    s.add_argument("--mjd", type=float, help="with --azimuth and --profile lsst: the visit's time, MJD (UTC; "
                   "default J2000.0)")  # fmt: skip
    s.add_argument("--rotation-angle", type=float, default=0.0, help="sky rotation angle of the image axes, deg")
    s.add_argument("--pixel-scale", type=float, default=0.2, help="arcsec/pixel (default 0.2)")
    # (the defaults are Rubin's, filled in later: the parser is built without numpy)
    s.add_argument("--latitude", type=float, help="site latitude, deg (default Rubin)")
    s.add_argument("--longitude", type=float, help="site longitude, deg (default Rubin)")
    s.add_argument("--height", type=float, help="site height, m (default Rubin)")
    s.add_argument("--profile", choices=["mpidcr", "lsst"], default="mpidcr",
                   help="lsst: afw's refraction and parallactic angle, LSST's split and unsplit shifts")  # fmt: skip
    s.add_argument("--temperature", type=float, help="air temperature, C (default: standard atmosphere)")
    s.add_argument("--pressure", type=float, help="air pressure, Pa (default: standard atmosphere)")
    s.add_argument("--humidity", type=float, help="relative humidity, %% (default 40)")
    s.add_argument("--split", action="store_true", help="split each sub-filter into two shifts (splitSubfilters)")
    s.add_argument("--split-threshold", type=float, default=0.1, help="splitThreshold, pixels (default 0.1)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_shifts)


def _cmd_shifts(args: argparse.Namespace) -> int:
    from .dcr import SPLIT_NODE_GAUSS, SPLIT_NODE_LSST, dcr_buffer, dcr_shifts, subfilter_edges

    obs = _shift_observation(args)
    K = args.subfilters
    lsst = args.profile == "lsst"
    s = dcr_shifts(obs, args.wavelength, args.bandwidth, K, args.pixel_scale, args.split, args.split_threshold,
                   formula="afw" if lsst else "stone", lsst_unsplit=lsst,
                   split_node=SPLIT_NODE_LSST if lsst else SPLIT_NODE_GAUSS)  # fmt: skip
    edges = subfilter_edges(args.wavelength, args.bandwidth, K)
    w = obs.resolved_weather
    if args.json:
        shifts = s.forward.tolist() if args.split else s.mean.tolist()
        print(json_text({
            "shifts": shifts,
            "split": s.split.tolist() if args.split else None,
            "subfilter_edges_nm": edges.tolist(),
            "refraction_arcsec": s.refraction_arcsec.tolist(),
            "elevation_deg": obs.elevation,
            "parallactic_angle_deg": obs.parallactic_angle,
            "profile": args.profile,
            "weather": {"temperature_C": w.temperature, "pressure_Pa": w.pressure, "humidity_pct": w.humidity},
            "buffer_pixels": dcr_buffer(s.max_abs),
        }))  # fmt: skip
        return 0
    print(f"elevation {obs.elevation:.3f} deg, airmass {obs.airmass:.4f}, T {w.temperature:.2f} C, "
          f"P {w.pressure:.0f} Pa, RH {w.humidity:.0f} %")  # fmt: skip
    print("ΔR at sub-filter edges (arcsec): " + ", ".join(f"{v:+.4f}" for v in s.refraction_arcsec))
    for k in range(K):
        band = f"{edges[k]:7.2f}-{edges[k + 1]:7.2f} nm"
        if args.split:
            a, b = s.forward[k]
            note = "" if s.split[k] else "  [below splitThreshold: mean used]"
            print(f"sub-filter {k} {band}: ({a[0]:+.4f}, {a[1]:+.4f}) and ({b[0]:+.4f}, {b[1]:+.4f}) px{note}")
        else:
            print(f"sub-filter {k} {band}: dy {s.mean[k][0]:+.4f} px, dx {s.mean[k][1]:+.4f} px")
    return 0


def _resolve_config(args: argparse.Namespace, manifest_config: dict | None = None, band: dict | None = None):
    """Defaults < manifest [config] < manifest [band] < --effective-wavelength/--bandwidth < --config <
    --profile < --set."""
    from .io.configfile import load_config

    base: dict = dict(manifest_config or {})
    base.update(band or {})
    if getattr(args, "effective_wavelength", None) is not None:
        base["effectiveWavelength"] = args.effective_wavelength
    if getattr(args, "bandwidth", None) is not None:
        base["bandwidth"] = args.bandwidth
    profile = getattr(args, "profile", None)
    sets = ([f"profile={profile}"] if profile else []) + list(args.set or [])
    return load_config(args.config, sets, base=base)


def _add_run(sub: argparse._SubParsersAction) -> None:
    """The ``run`` subcommand's arguments."""
    r = sub.add_parser(
        "run",
        help="build the DCR model of a patch (under mpiexec/srun for several ranks)",
        description="Build the DCR sky model of the warps named by MANIFEST (or --warps) and "
        "write one HDF5 model file.  Run under mpiexec/srun for several ranks.",
    )
    r.add_argument("manifest", nargs="?", help="TOML manifest (band, site, warps, config)")
    r.add_argument("-o", "--output", required=True, help="output HDF5 model file")
    r.add_argument(
        "--warps",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="warp files or quoted glob patterns, instead of a manifest",
    )
    r.add_argument("--effective-wavelength", type=float, help="effectiveWavelength, nm")
    r.add_argument("--bandwidth", type=float, help="bandwidth, nm")
    r.add_argument("--pixel-scale", type=float, help="arcsec/pixel, if the warps carry no celestial WCS")
    r.add_argument("--config", help="configuration file (TOML, YAML or LSST .py overrides)")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a configuration field")
    r.add_argument("--profile", choices=["mpidcr", "lsst"],
                   help="whose behaviour to follow (the configuration field 'profile'; lsst: DcrAssembleCoaddTask's, "
                        "see docs/lsst-differences.md)")  # fmt: skip
    r.add_argument("--static-model", metavar="FILE",
                   help="the static model T: a deepCoadd-layout FITS (IMAGE/MASK/VARIANCE) or an mpidcr model file "
                        "(default: the coadd of the warps)")  # fmt: skip
    r.add_argument("--bright-object-mask", metavar="FILE",
                   help="bright-object regions for doMaskBrightObjects: LSST's bright-object mask file or a ds9 "
                        "region file in sky coordinates (circle, box)")  # fmt: skip
    r.add_argument("--measure-psf", action="store_true",
                   help="measure the PSF of visits that have none (no PSF HDU, psfFwhm or PSF-FWHM) from their "
                        "bright isolated stars")  # fmt: skip
    r.add_argument("--tiles", metavar="PYxPX", help="tile grid (default: chosen from the patch shape)")
    r.add_argument(
        "--output-mode",
        choices=["auto", "mpio", "gather"],
        default="auto",
        help="parallel HDF5 (mpio) or through rank 0 (gather); auto picks mpio when h5py has MPI",
    )
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    r.add_argument(
        "--checkpoint-every",
        type=_non_negative,
        default=0,
        metavar="K",
        help="write a checkpoint every K iterations (also written on SIGTERM)",
    )
    r.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default: OUTPUT.ckpt)")
    r.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint of the same inputs and configuration")
    r.add_argument(
        "--threads", type=int, default=1, help="numba threads per rank for hybrid MPI+threads runs (default 1: off)"
    )
    r.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="refuse to start if a rank would need more than SIZE (e.g. 4G); suggests a rank count",
    )
    r.add_argument("--json", action="store_true", help="print the run summary as JSON")
    r.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace, comm) -> int:
    from .driver import RunOptions, inputs_from_manifest, on_root, prepare_inputs, run
    from .io.manifest import Manifest, WarpEntry, merge_entries, read_manifest
    from .io.paths import expand_pattern
    from .resources import parse_bytes

    if (args.manifest is None) == (not args.warps):
        raise MpidcrError("give a manifest or --warps FILE... (not both)")
    sources = [args.config] if args.config else []

    def load():
        if args.manifest:
            manifest = read_manifest(args.manifest)
        else:
            entries = [WarpEntry(path=p) for pattern in args.warps for p in expand_pattern(pattern, where="--warps")]
            manifest = Manifest(warps=merge_entries(entries, "--warps"))
        cfg = _resolve_config(args, manifest.config, manifest.band)
        if args.manifest:
            return inputs_from_manifest(manifest, cfg, args.pixel_scale, sources, args.static_model, args.measure_psf,
                                        args.bright_object_mask)  # fmt: skip
        return prepare_inputs(manifest.warps, cfg, None, args.pixel_scale, sources, args.static_model,
                              args.measure_psf, args.bright_object_mask)  # fmt: skip

    from .kernels import set_threads

    set_threads(args.threads)
    inputs = on_root(comm, load)
    options = RunOptions(
        output=args.output,
        tiles=args.tiles,
        output_mode=args.output_mode,
        overwrite=args.overwrite,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        max_memory=parse_bytes(args.max_memory) if args.max_memory else None,
    )
    summary = run(inputs, options, comm)
    if comm.rank == 0:
        if args.json:
            print(json_text(summary.as_dict()))
        else:
            print(
                f"{summary.output}: {summary.iterations} iterations ({summary.stop_reason}), "
                f"final metric {summary.metric:.5g}, {summary.ranks} rank(s) as "
                f"{summary.tiles[0]}x{summary.tiles[1]} tiles, {summary.seconds['total']:.1f} s"
            )
    return 0


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 to turn it off")
    return value


def _patch_size(text: str) -> int | tuple[int, int]:
    """``256`` or ``2048x4096`` (rows x columns)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size: use N or NYxNX (e.g. 2048x4096)") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"'{text}' is not a size: use N or NYxNX (e.g. 2048x4096)")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    """The ``simulate`` subcommand's arguments."""
    m = sub.add_parser(
        "simulate",
        help="simulate warps of a star field with DCR (known truth)",
        description="Write simulated warps (LSST layout), a manifest and a truth file to OUTDIR.",
    )
    m.add_argument("outdir")
    m.add_argument(
        "--size", type=_patch_size, default=256, help="patch side, or NYxNX for a rectangle, pixels (default 256)"
    )
    m.add_argument("--visits", type=int, default=12, help="visits in the manifest (default 12)")
    m.add_argument("--science", type=int, default=3, help="extra held-out science visits (default 3)")
    m.add_argument("--stars", type=int, default=None, help="number of stars (default: scales with area)")
    m.add_argument("--airmass-min", type=float, default=1.0)
    m.add_argument("--airmass-max", type=float, default=2.0)
    m.add_argument("--seeing", type=float, default=0.6, help="PSF FWHM, arcsec (default 0.6)")
    m.add_argument("--seeing-max", type=float, default=None,
                   help="galsim engine: each visit's seeing is drawn in [seeing, seeing-max] (default 1.1, or "
                        "--seeing if that is larger; = --seeing for constant seeing)")  # fmt: skip
    m.add_argument("--seeing-profile", choices=("kolmogorov", "gaussian"), default="kolmogorov",
                   help="galsim engine: the seeing's shape (default kolmogorov; gaussian makes the PSF-aware "
                        "model's Gaussian matching kernels exact)")  # fmt: skip
    m.add_argument(
        "--angle-spread",
        type=float,
        default=180.0,
        help="parallactic angles drawn in +-this many degrees (default 180)",
    )
    m.add_argument("--galaxies", type=int, default=0, help="faint chromatic galaxies (galsim engine)")
    m.add_argument("--cosmic-rays", type=int, default=0, help="cosmic-ray tracks per visit (unmasked artifacts)")
    m.add_argument("--satellites", type=float, default=0.0, help="fraction of visits with a satellite trail")
    m.add_argument(
        "--engine",
        choices=["galsim", "numpy"],
        default="galsim",
        help="galsim: chromatic GalSim rendering through LSST g (default); numpy: fast power-law stars",
    )
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .sim import simulate

    info = simulate(
        args.outdir,
        size=args.size,
        num_visits=args.visits,
        num_science=args.science,
        num_stars=args.stars,
        airmass_range=(args.airmass_min, args.airmass_max),
        seed=args.seed,
        seeing_fwhm_arcsec=args.seeing,
        seeing_max_arcsec=args.seeing_max if args.seeing_max is not None else max(1.1, args.seeing),
        seeing_profile=args.seeing_profile,
        overwrite=args.overwrite,
        engine=args.engine,
        angle_spread=args.angle_spread,
        num_galaxies=args.galaxies,
        cosmic_rays=args.cosmic_rays,
        satellite_fraction=args.satellites,
    )
    print(f"wrote {info['num_visits']} warps, {info['num_science']} science visits, manifest {info['manifest']}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    """The ``export`` subcommand's arguments."""
    e = sub.add_parser(
        "export",
        help="write the model's sub-filter planes and coadd as FITS",
        description="Write one FITS file per sub-filter plane and one for the coadd "
        "(IMAGE/MASK/VARIANCE with the WCS).",
    )
    e.add_argument("model", help="HDF5 model file")
    e.add_argument("--fits", required=True, metavar="OUTDIR", help="output directory")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .io.products import export_fits

    for path in export_fits(args.model, args.fits, overwrite=args.overwrite):
        print(path)
    return 0


def _visit_overrides(args: argparse.Namespace) -> dict:
    fields = {
        "airmass": args.airmass,
        "elevation": args.elevation,
        "parallacticAngle": args.parallactic_angle,
        "rotationAngle": args.rotation_angle,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _add_template(sub: argparse._SubParsersAction) -> None:
    """The ``template`` subcommand's arguments."""
    t = sub.add_parser(
        "template",
        help="DCR-matched template for a visit",
        description="Forward-model the template of the model for WARP's observing conditions "
        "(or for the conditions given as options), in the warp layout.  A science exposure on other "
        "pixels than the model's patch (its own WCS and bbox), or several models (the patches of a "
        "tract): the template on the science exposure's pixels, each overlapping patch resampled "
        "(reproject, flux-conserving) and mosaicked weighted by var^-1/2, NO_DATA where none covers.",
    )
    t.add_argument("paths", nargs="+", metavar="MODEL [MODEL ...] [SCIENCE]",
                   help="HDF5 model file(s), then the science exposure or warp (FITS) whose conditions to match")  # fmt: skip
    t.add_argument("-o", "--output", required=True, help="output FITS file")
    t.add_argument("--airmass", type=float)
    t.add_argument("--elevation", type=float, help="deg")
    t.add_argument("--parallactic-angle", type=float, help="deg")
    t.add_argument("--rotation-angle", type=float, help="deg (default: from the warp's WCS)")
    t.add_argument("--profile", choices=["mpidcr", "lsst"],
                   help="make the template as mpidcr or as LSST's buildMatchedExposure does (spline order 3, "
                        "sub-filters always split, LSST's angles); default: the model's profile")  # fmt: skip
    t.add_argument("--match-psf", action="store_true",
                   help="the template at the science warp's PSF (a PSF-aware model: forward-modelled at it)")  # fmt: skip
    t.add_argument("--border", type=int, default=0, metavar="PIXELS",
                   help="on the science exposure's pixels: grow its bbox by PIXELS on every side (LSST's "
                        "templateBorderSize)")  # fmt: skip
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_cmd_template)


def _cmd_template(args: argparse.Namespace) -> int:
    from .io.detector import on_model_grid, write_detector_template
    from .io.products import write_template
    from .io.static import is_hdf5

    for path in args.paths:
        if not os.path.isfile(path):
            raise MpidcrError(f"{path}: file not found")
    models = [p for p in args.paths if is_hdf5(p)]
    science = [p for p in args.paths if not is_hdf5(p)]
    if not models:
        raise MpidcrError("give at least one model file (HDF5)")
    if len(science) > 1:
        raise MpidcrError(f"one science exposure at a time, not {len(science)} ({', '.join(science[:3])})")
    warp = science[0] if science else None
    if warp is not None and (len(models) > 1 or not on_model_grid(models[0], warp)):
        if args.match_psf:
            raise MpidcrError("--match-psf: only for a science warp on the model's patch grid")
        out = write_detector_template(models, warp, args.output, _visit_overrides(args), overwrite=args.overwrite,
                                      profile=args.profile, border=args.border)  # fmt: skip
        print(f"wrote {out['output']} on {warp}'s pixels from {len(out['models'])} of {len(models)} models")
        return 0
    if len(models) > 1:
        raise MpidcrError("several models need the science exposure whose pixels the template is made on")
    info = write_template(models[0], warp, args.output, _visit_overrides(args), overwrite=args.overwrite,
                          profile=args.profile, match_psf=args.match_psf)  # fmt: skip
    print(
        f"wrote {info['output']} (elevation {info['elevation']:.2f} deg, parallactic angle "
        f"{info['parallactic_angle']:.2f} deg)"
    )
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    """The ``inspect`` subcommand's arguments."""
    i = sub.add_parser(
        "inspect",
        help="summary and quicklook PNGs of a model file",
        description="Print visits, convergence and flux per sub-filter; --png writes quicklooks.",
    )
    i.add_argument("model", help="HDF5 model file")
    i.add_argument("--png", metavar="DIR", help="write RGB, convergence and nImage PNGs to DIR")
    i.add_argument("--json", action="store_true")
    i.add_argument("--check", action="store_true", help="only check that the file is a complete model (exit 0, else 1)")
    i.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .analysis.quicklook import format_summary, quicklooks, summary
    from .io.modelfile import model_is_complete, read_model

    if args.check:  # for job scripts: no arrays are read
        ok = model_is_complete(args.model)
        print(f"{args.model}: {'complete' if ok else 'missing or incomplete'}")
        return 0 if ok else 1
    s = summary(read_model(args.model))
    print(json_text(s) if args.json else format_summary(s))
    if args.png:
        for path in quicklooks(args.model, args.png):
            print(path)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand's arguments."""
    v = sub.add_parser(
        "evaluate",
        help="DCR-matched vs plain-coadd templates on held-out science warps",
        description="For each science warp: residual RMS in source footprints and >=5 sigma "
        "false detections of the DCR-matched and of the plain-coadd template.",
    )
    v.add_argument("model", help="HDF5 model file")
    v.add_argument("warps", nargs="+", help="science warps (FITS)")
    v.add_argument("--truth", help="truth file of 'mpidcr simulate' (truth.npz) for the colour check")
    v.add_argument("--png", metavar="FILE", help="plot of residuals vs airmass")
    v.add_argument("--no-psf-match", action="store_true",
                   help="difference template and science directly (default: PSF-match them first)")  # fmt: skip
    v.add_argument("--matching", choices=("known", "fitted"), default="known",
                   help="PSF matching: 'known' blurs the sharper image with the kernel between the two known "
                        "PSFs (a fitted kernel where a PSF is unknown); 'fitted' always fits an Alard-Lupton "
                        "kernel to the two images, as LSST's image differencing does (default: known)")  # fmt: skip
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .analysis.evaluate import evaluate, format_table, residual_plot

    result = evaluate(args.model, args.warps, truth=args.truth, psf_match=not args.no_psf_match,
                      matching=args.matching)  # fmt: skip
    print(json_text(result) if args.json else format_table(result))
    if args.png:
        print(residual_plot(result, args.png))
    return 0


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (``mpidcr: error: …``, exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("mpidcr").strip()
        self.exit(2, f"mpidcr: error: {command + ': ' if command else ''}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineErrorParser(
        prog="mpidcr",
        description="DCR (differential chromatic refraction) sky models of a sky patch from many warps, and "
        "DCR-matched templates for image differencing; one process or many MPI ranks.",
        epilog="examples:\n"
        "  mpidcr simulate sim/ && mpidcr run sim/manifest.toml -o model.h5\n"
        "  mpiexec -n 4 mpidcr run manifest.toml -o model.h5\n"
        "  mpidcr template model.h5 science.fits -o template.fits\n"
        "see 'mpidcr COMMAND --help' and docs/usage.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mpidcr {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--log-all-ranks", action="store_true", help="let every MPI rank log, prefixed with its rank")
    p.add_argument(
        "--kernel-cache",
        metavar="DIR",
        help="numba's cache of compiled kernels in DIR (sets NUMBA_CACHE_DIR; e.g. a node-local disk when the "
        "install is on a shared file system); default: next to the installed sources",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for add in (_add_config, _add_shifts, _add_run, _add_simulate, _add_export, _add_template, _add_inspect,
                _add_evaluate):  # fmt: skip
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.kernel_cache:
        try:
            use_kernel_cache(args.kernel_cache)
        except MpidcrError as exc:
            return _report(exc, None)
    if args.command != "run":
        return _dispatch(args, None)
    from .parallel.comm import get_comm, install_abort_hook
    from .preemption import STOP

    STOP.install()  # first thing: a SIGTERM from now on stops the run cleanly (exit 75)
    try:
        comm = get_comm()
        install_abort_hook(comm)
        return _dispatch(args, comm)
    finally:
        STOP.restore()


def use_kernel_cache(directory: str) -> None:
    """Keep numba's compiled kernels in ``directory`` (created if missing): NUMBA_CACHE_DIR, which numba
    reads when the kernels are imported, so this must come first."""
    path = os.path.abspath(os.path.expanduser(directory))
    if "mpidcr.kernels" in sys.modules and os.environ.get("NUMBA_CACHE_DIR") != path:
        raise MpidcrError(f"--kernel-cache {directory}: the kernels are already loaded in this process (set "
                          "NUMBA_CACHE_DIR before importing mpidcr's kernels)")  # fmt: skip
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise MpidcrError(f"--kernel-cache {directory}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MpidcrError(f"--kernel-cache {directory}: not writable")
    os.environ["NUMBA_CACHE_DIR"] = path


def _dispatch(args: argparse.Namespace, comm: Comm | None) -> int:
    """Run the subcommand of ``args``; every MpidcrError becomes one line and an exit code."""
    from .logs import setup_logging

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    setup_logging(rank=rank, size=size, level=level, all_ranks=args.log_all_ranks)
    try:
        try:
            return int((args.func(args, comm) if comm is not None else args.func(args)) or 0)
        except MemoryError:
            raise MpidcrError("out of memory; use more ranks (or nodes), or a smaller patch") from None
    except MpidcrError as exc:
        return _report(exc, comm)


def _report(exc: MpidcrError, comm: Comm | None) -> int:
    """Print ``exc`` as one line (once, for an error every rank raised) and return its exit code;
    an error of one rank alone takes the others down rather than leave them waiting."""
    code = int(getattr(exc, "exit_code", 2))
    if comm is None or comm.size == 1 or getattr(exc, "collective", False):
        if comm is None or comm.rank == 0:
            print(f"mpidcr: {'stopped' if code != 2 else 'error'}: {exc}", file=sys.stderr)
        return code
    print(f"mpidcr: error: [rank {comm.rank}] {exc}", file=sys.stderr)
    comm.abort(2)
    return 2


def run_main() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    exit_now(code)


def exit_now(code: int) -> None:
    """End the process with ``code`` once a command has finished, skipping only the interpreter's
    teardown of its modules: with numpy, scipy, astropy and numba's loaded kernels that took
    0.7–1.3 s of a 4–5 s run of a small field (measured: 0.3 s for numba alone, 0.66 s once a cached
    kernel is loaded, 0.5 s for astropy).  Everything an exit must do is still done, in order: the
    exit handlers (``atexit``), logging flushed and closed, MPI finalized if this process started
    it, the standard streams flushed.  Outputs are complete and renamed by then."""
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # (a closed pipe: nothing more can be said)
            stream.flush()
    os._exit(code)
