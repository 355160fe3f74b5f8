"""mpidcr's Python interface: open a model, make templates, build a model in-process.

Importable without mpi4py or GalSim.  Arrays are numpy, axis order (y, x) (sub-filter planes:
(K, y, x)); pixel values in the warps' units; angles in degrees; wavelengths in nm.

>>> import mpidcr
>>> model = mpidcr.open_model("model.h5")                              # doctest: +SKIP
>>> template = model.template(airmass=1.4, parallactic_angle=35.0)     # doctest: +SKIP
>>> template.data.shape == model.planes.shape[1:]                      # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .config import DcrConfig
from .dcr import Observation, Site, Weather, check_elevation, elevation_from_airmass
from .errors import InputError

if TYPE_CHECKING:
    from astropy.nddata import CCDData
    from astropy.table import Table
    from astropy.wcs import WCS

__all__ = ["DcrConfig", "Model", "Observation", "Site", "SolveResult", "Weather", "open_model", "run", "solve"]


class Model:
    """A DCR model read from its file (:func:`open_model`).

    Attributes
    ----------
    path : str
        The model file.
    planes : numpy.ndarray
        (K, ny, nx) float32, the sub-filter planes in image units; plane k covers
        ``subfilter_edges[k]`` to ``subfilter_edges[k + 1]`` nm.
    coadd : numpy.ndarray
        (ny, nx), their sum.
    variance : numpy.ndarray
        (ny, nx), the coadd's variance, image units².
    mask : numpy.ndarray
        (ny, nx) int32 bit mask with the planes ``mask_planes`` (name → bit).
    static : numpy.ndarray
        (ny, nx), the static sky model.
    nimage : numpy.ndarray or None
        (K, ny, nx) int32, the visits contributing to each plane (None without doNImage).
    psf : numpy.ndarray or None
        (n, n) float64 PSF image of the planes, unit sum (None if the visits had no PSF).
    """

    def __init__(self, path: str | os.PathLike[str]):
        from .io.modelfile import read_model

        self._file = read_model(str(path))
        f = self._file
        self.path = str(path)
        self.planes: NDArray[np.float32] = f.model
        self.coadd: NDArray = f.coadd
        self.variance: NDArray = f.variance
        self.mask: NDArray[np.int32] = f.mask
        self.mask_planes: dict[str, int] = dict(f.mask_planes)
        self.static: NDArray = f.static
        self.nimage: NDArray | None = f.nimage
        self.psf: NDArray | None = f.psf

    @property
    def config(self) -> DcrConfig:
        """The configuration the model was built with (LSST field names)."""
        from .io.products import model_config

        return model_config(self._file)

    @property
    def wcs(self) -> WCS:
        """The patch's celestial WCS (astropy)."""
        from .io.wcs import celestial_wcs

        return celestial_wcs(self._file.attrs["wcs_header"])

    @property
    def pixel_scale(self) -> float:
        """arcsec per pixel."""
        return float(self._file.attrs["pixel_scale"])

    @property
    def subfilter_edges(self) -> NDArray[np.float64]:
        """(K + 1,) sub-filter edges, nm."""
        return np.asarray(self._file.attrs["subfilter_edges"], dtype=np.float64)

    @property
    def visits(self) -> Table:
        """The visits table (visit, file, airmass, elevation, parallactic and rotation angles in
        degrees, weight, PSF FWHM in arcsec, mean shifts (K, 2) in pixels, ...)."""
        from astropy.table import Table

        return Table(self._file.visits)

    @property
    def history(self) -> Table:
        """The convergence history: iteration, metric, gain, seconds."""
        from astropy.table import Table

        return Table(self._file.convergence)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's attributes (band, sub-filter edges, ranks, tile grid, stop reason, ...)."""
        return dict(self._file.attrs)

    def observation(self, *, airmass: float | None = None, elevation: float | None = None,
                    parallactic_angle: float, rotation_angle: float | None = None, site: Site | None = None,
                    weather: Weather | None = None) -> Observation:  # fmt: skip
        """The observing conditions of a visit: ``elevation`` (deg) or ``airmass``, the parallactic
        angle (deg, north through east), the rotation angle of the patch's +y axis (deg; default:
        from the patch's WCS), the site (default Rubin's) and the weather (default: a standard
        atmosphere at the site)."""
        from .io.wcs import image_rotation_angle

        if elevation is None:
            if airmass is None:
                raise ValueError("give airmass or elevation (degrees)")
            elevation = elevation_from_airmass(float(airmass))
        check_elevation(float(elevation))
        if rotation_angle is None:
            found = image_rotation_angle(self._file.attrs["wcs_header"], float(parallactic_angle))
            rotation_angle = 0.0 if found is None else found
        return Observation(float(elevation), float(parallactic_angle), float(rotation_angle), weather, site or Site())

    def template(self, warp: str | os.PathLike[str] | None = None, *, airmass: float | None = None,
                 elevation: float | None = None, parallactic_angle: float | None = None,
                 rotation_angle: float | None = None, site: Site | None = None, weather: Weather | None = None,
                 observation: Observation | None = None, border: int = 0, profile: str | None = None) -> CCDData:  # fmt: skip
        """The DCR-matched template for a visit.

        Parameters
        ----------
        warp : str or path, optional
            A science warp or exposure (FITS) whose conditions to match.  On the model's patch grid
            the template is the patch's; on other pixels (its own WCS and bbox, grown by
            ``border`` pixels) it is resampled onto them.
        airmass, elevation, parallactic_angle, rotation_angle, site, weather : optional
            The conditions instead of a warp (see :meth:`observation`); angles in degrees.
        observation : Observation, optional
            The conditions as one object.
        border : int
            Pixels to grow a science exposure's bbox by.
        profile : str, optional
            ``"mpidcr"`` or ``"lsst"`` (LSST's template procedure); default: the model's.

        Returns
        -------
        astropy.nddata.CCDData
            Data in image units (y, x); ``uncertainty`` a VarianceUncertainty; ``mask`` True
            where NO_DATA, BAD or SAT; ``wcs``; ``meta`` with the conditions and, when known,
            ``meta['psf']``, the PSF image.
        """
        from astropy.io import fits

        from .io.products import honest_variance, observation_for_warp, template_at, template_config

        meta: dict[str, Any]
        if warp is not None:
            from .io.detector import detector_template, on_model_grid

            if not on_model_grid(self.path, str(warp)):
                t = detector_template([self.path], str(warp), None, profile, border)
                return _ccd(t.image, t.variance, t.mask != 0, fits.Header(t.wcs_header), t.meta, t.psf)
            info, obs = observation_for_warp(str(warp), cfg=template_config(self._file, profile))
            meta = {k: v for k, v in info.meta.items() if not k.startswith("_")}
        else:
            if observation is None:
                if parallactic_angle is None:
                    raise ValueError("give a warp, an observation, or the conditions (parallactic_angle and "
                                     "airmass or elevation)")  # fmt: skip
                observation = self.observation(airmass=airmass, elevation=elevation, parallactic_angle=parallactic_angle,
                                               rotation_angle=rotation_angle, site=site, weather=weather)  # fmt: skip
            obs = observation
            meta = {"elevation": obs.elevation, "airmass": obs.airmass, "parallacticAngle": obs.parallactic_angle,
                    "rotationAngle": obs.rotation_angle}  # fmt: skip
        image, psf = template_at(self._file, obs, profile)
        variance, _ = honest_variance(image, self.variance.astype(np.float64), self.mask, self.mask_planes)
        from .masks import plane_bits

        bad = (self.mask & plane_bits(self.mask_planes, ["NO_DATA", "BAD", "SAT"])) != 0
        return _ccd(image, variance, bad, fits.Header.fromstring(self._file.attrs["wcs_header"]), meta, psf)


def _ccd(image: NDArray, variance: NDArray, mask: NDArray, header: Any, meta: dict[str, Any],
         psf: NDArray | None) -> CCDData:  # fmt: skip
    from astropy import units as u
    from astropy.nddata import CCDData, VarianceUncertainty
    from astropy.wcs import WCS

    meta = dict(meta)
    if psf is not None:
        meta["psf"] = np.asarray(psf)
    return CCDData(np.asarray(image, np.float64), unit=u.adu, uncertainty=VarianceUncertainty(variance),
                   mask=np.asarray(mask, bool), wcs=WCS(header).celestial, meta=meta)  # fmt: skip


def open_model(path: str | os.PathLike[str]) -> Model:
    """Open a model file (written by ``mpidcr run`` or :func:`run`)."""
    return Model(path)


def run(manifest: str | os.PathLike[str] | None = None, output: str | os.PathLike[str] = "model.h5", *,
        warps: Sequence[str] | None = None, config: DcrConfig | Mapping[str, Any] | None = None,
        comm: Any = None, overwrite: bool = False, tiles: str | None = None) -> Model:  # fmt: skip
    """Build a model in-process, as ``mpidcr run`` does, write it to ``output`` and open it.

    Parameters
    ----------
    manifest : str or path, optional
        A TOML manifest.
    output : str or path
        The model file to write.
    warps : list of str, optional
        FITS warp files instead of a manifest (the band then in ``config``).
    config : DcrConfig or mapping, optional
        Fields (LSST names) over the manifest's.
    comm : mpi4py communicator, optional
        Its ranks all call this, each solving its tile of the patch; None: this process alone.
    overwrite : bool
        Replace an existing output.
    tiles : str, optional
        The tile grid, e.g. ``"2x2"`` (default: chosen from the patch shape).

    Returns
    -------
    Model
    """
    from .driver import RunOptions, inputs_from_manifest, prepare_inputs
    from .driver import run as run_driver
    from .io.manifest import Manifest, WarpEntry, read_manifest
    from .parallel.comm import MpiComm, SerialComm

    if (manifest is None) == (warps is None):
        raise ValueError("give a manifest or warps (not both)")
    parsed = read_manifest(str(manifest)) if manifest is not None else Manifest(warps=[WarpEntry(path=str(w)) for w in warps or ()])
    values: dict[str, Any] = {**parsed.band, **parsed.config}
    if isinstance(config, DcrConfig):
        values.update(config.as_dict())
    elif config is not None:
        values.update(config)
    cfg = DcrConfig(**values)
    wrapped = SerialComm() if comm is None or comm.Get_size() == 1 else MpiComm(comm)
    inputs = inputs_from_manifest(parsed, cfg) if manifest is not None else prepare_inputs(parsed.warps, cfg)
    run_driver(inputs, RunOptions(output=str(output), overwrite=overwrite, tiles=tiles), wrapped)
    if comm is not None:
        comm.Barrier()
    return Model(output)


@dataclass
class SolveResult:
    """A model solved from arrays (:func:`solve`).

    Attributes
    ----------
    planes : numpy.ndarray
        (K, ny, nx) sub-filter planes, image units.
    coadd, static : numpy.ndarray
        (ny, nx): their sum, and the static sky model.
    nimage : numpy.ndarray
        (K, ny, nx) visits contributing to each plane.
    iterations : int
    stop_reason : str
    """

    planes: NDArray
    coadd: NDArray
    static: NDArray
    nimage: NDArray
    iterations: int
    stop_reason: str


def solve(images: NDArray, variances: NDArray, *, airmass: Sequence[float], parallactic_angle: Sequence[float],
          effective_wavelength: float, bandwidth: float, pixel_scale: float, masks: NDArray | None = None,
          rotation_angle: Sequence[float] | None = None, config: DcrConfig | Mapping[str, Any] | None = None,
          site: Site | None = None) -> SolveResult:  # fmt: skip
    """A DCR model of arrays in this process (no files, no MPI).  The arrays are copied (the solver
    works on its own float32 stacks) and left as they were: a solve needs about twice their memory.

    Parameters
    ----------
    images, variances : numpy.ndarray
        (V, ny, nx) warps of one patch, image units and their squares.
    airmass, parallactic_angle : sequence of float
        Per visit; degrees.
    effective_wavelength, bandwidth : float
        The band, nm.
    pixel_scale : float
        Arcsec per pixel.
    masks : numpy.ndarray, optional
        (V, ny, nx) int bit masks with LSST's default planes (NO_DATA bit 8, DETECTED bit 5);
        None: all good, sources detected on the static model.
    rotation_angle : sequence of float, optional
        Per visit, degrees: the DCR points at ``parallactic_angle − rotation_angle`` from +y
        towards +x (0 for a North-up, East-left grid; a run derives it from each warp's WCS,
        ``Model.visits['rotation_angle']``).
    config : DcrConfig or mapping, optional
        Fields (LSST names).
    site : Site, optional
        The observatory (default Rubin's).

    Returns
    -------
    SolveResult
    """
    from .dcr import dcr_shifts
    from .masks import DEFAULT_PLANES
    from .solver import DcrSolver, WarpStack

    # copies: the solver sets bad pixels to 0, scales variances and marks masks in its stacks, and
    # the caller's arrays must come back as they went in
    images = np.array(images, dtype=np.float32, order="C")
    if images.ndim != 3:
        raise InputError(f"images must be (V, ny, nx), not of shape {images.shape}")
    V = images.shape[0]
    per_visit = {"airmass": airmass, "parallactic_angle": parallactic_angle}
    if rotation_angle is not None:
        per_visit["rotation_angle"] = rotation_angle
    if V < 2:
        raise InputError(f"at least 2 visits are needed, not {V} (images {images.shape})")
    for name, given in per_visit.items():
        if len(given) != V:
            raise InputError(f"{name} has {len(given)} values for {V} visits (images {images.shape})")
    values = {"effectiveWavelength": effective_wavelength, "bandwidth": bandwidth}
    if isinstance(config, DcrConfig):
        values = {**config.as_dict(), **values}
    elif config is not None:
        values = {**dict(config), **values}
    cfg = DcrConfig(**values)
    rotation = list(rotation_angle) if rotation_angle is not None else [0.0] * V
    shifts = []
    for a, q, r in zip(airmass, parallactic_angle, rotation, strict=True):
        obs = Observation(elevation_from_airmass(float(a)), float(q), float(r), None, site or Site())
        shifts.append(dcr_shifts(obs, cfg.effectiveWavelength, cfg.bandwidth, cfg.num_subfilters, pixel_scale,
                                 **cfg.shift_options()))  # fmt: skip
    mask_array = np.zeros(images.shape, np.int32) if masks is None else np.array(masks, np.int32, order="C")
    stack = WarpStack(images, np.array(variances, dtype=np.float32, order="C"), mask_array, dict(DEFAULT_PLANES),
                      shifts, np.asarray(airmass, dtype=np.float64), [str(v) for v in range(V)])  # fmt: skip
    result = DcrSolver(stack, cfg).run()
    return SolveResult(result.planes, result.coadd, result.static.image, result.nimage, result.iterations,
                       result.stop_reason.value)  # fmt: skip
