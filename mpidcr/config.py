"""The configuration of a DCR coadd: every field of the seed task, typed and checked.

One :class:`DcrConfig` holds the 68 configuration fields of Rubin's
``DcrAssembleCoaddTask`` under their original (camelCase) names and defaults, so
an LSST user can paste their values, plus one nested section per retargetable
subtask (14) with fields of mpidcr's own design.  snake_case aliases
(``dcr_num_subfilters``) are accepted everywhere a name is read.

Each field carries a one-line doc, a status and a check:

- ``used``       the field changes what mpidcr computes;
- ``lsst-only``  the field only means something inside the LSST middleware
                 (butler connections, Gen2 calibration names, metadata saving);
                 accepted, documented, and ignored with a notice when set.

Every field of the seed task acts (none is merely accepted).

Sources of values, later ones win: defaults < file (TOML, YAML with safe
loading, or an LSST-style ``config.name = value`` override file parsed without
executing it) < ``--set name=value`` overrides.  Every problem is a
:class:`~mpidcr.errors.ConfigError` whose one-line message names the field and
what is allowed.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .dcr import SPLIT_NODE_GAUSS, SPLIT_NODE_LSST, WAVELENGTH_MAX_NM, WAVELENGTH_MIN_NM
from .errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[Any], str | None]
"""A check returns None when a value is allowed, else the allowed values as text."""

#: FieldSpec.seed when the seed's raw default is the effective default
SAME = "<same>"


@dataclass(frozen=True)
class FieldSpec:
    """Description of one configuration field.

    Attributes
    ----------
    name : camelCase name (the seed task's).
    kind : one of ``bool int float str list dict pair``.
    default : the default value (lists are tuples).
    doc : one-line description (units stated).
    optional : None is an allowed value.
    check : extra range/choice check, see :data:`Check`.
    status : ``used`` or ``lsst-only``.
    seed : the seed listing's raw default where it differs from ``default`` (the effective
        default LSST's ``setDefaults`` chain gives the task); :data:`SAME` otherwise.
    """

    name: str
    kind: str
    default: Any
    doc: str
    optional: bool = False
    check: Check | None = None
    status: str = "used"
    seed: Any = "<same>"

    @property
    def seed_default(self) -> Any:
        """The seed listing's raw default."""
        return self.default if self.seed == SAME else self.seed

    @property
    def type_name(self) -> str:
        base = {"list": "list[str]", "dict": "dict[str, float]", "pair": "list[int] (length 2)"}
        text = base.get(self.kind, self.kind)
        return f"{text} | None" if self.optional else text


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = True
        if lo is not None:
            ok &= v > lo if lo_open else v >= lo
        if hi is not None:
            ok &= v < hi if hi_open else v <= hi
        if ok:
            return None
        left = ("(" if lo_open else "[") + (str(lo) if lo is not None else "-inf")
        right = (str(hi) if hi is not None else "inf") + (")" if hi_open else "]")
        return f"a value in {left}, {right}"

    return check


def _choice(*choices: Any) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _odd_positive(v: Any) -> str | None:
    return None if v > 0 and v % 2 == 1 else "an odd positive integer"


def _pair_positive(v: Any) -> str | None:
    return None if all(x > 0 for x in v) else "two positive integers (width, height)"


def _fractions(v: Any) -> str | None:
    return None if all(0.0 <= x <= 1.0 for x in v.values()) else "fractions in [0, 1]"


# fmt: off
F, L = FieldSpec, "lsst-only"

#: The 68 fields of the seed task, alphabetical as in its listing.
FIELDS: tuple[FieldSpec, ...] = (
    F("accelerateModel", "float", 3.0, "Factor A (1 to 100) amplifying the differences between sub-filter planes in the forward model and the output.", check=_range(1.0, 100.0)),
    F("badMaskPlanes", "list", ("NO_DATA", "BAD", "SAT"), "Mask planes whose pixels are excluded from the coadd and the fit.", seed=("NO_DATA",)),
    F("bandwidth", "float", None, "Width of the band in nm (required).", optional=True, check=_range(0.0, None, lo_open=True)),
    F("baseGain", "float", None, "Weight of the new solution against the last one (1 = equal); None: 1/(K-1).", optional=True, check=_range(0.0, None, lo_open=True)),
    F("brightObjectMaskName", "str", "BRIGHT_OBJECT", "Mask plane name for bright-object regions (doMaskBrightObjects)."),
    F("calcErrorFromInputVariance", "bool", True, "Coadd variance from the input variances (True) or from the scatter of the inputs (False)."),
    F("clipIter", "int", 2, "Number of sigma-clipping passes of the MEANCLIP statistic.", check=_range(1, 100)),
    F("coaddName", "str", "deep", "Butler name of the coadd (deep, goodSeeing); only labels the output.", status=L),
    F("coaddPsf", "dict", {}, "CoaddPsf configuration of the LSST stack.", status=L),
    F("connections", "dict", {}, "Butler dataset connections of the LSST PipelineTask.", status=L),
    F("convergenceMaskPlanes", "list", ("DETECTED",), "Mask planes whose pixels enter the convergence metric and the model weights."),
    F("convergenceThreshold", "float", 0.001, "Stop when the relative improvement of the metric per iteration falls below this.", check=_range(0.0, None)),
    F("dcrNumSubfilters", "int", 3, "Number K of sub-filters the band is split into (2 to 32).", check=_range(2, 32)),
    F("doAirmassWeight", "bool", False, "Multiply each visit's weight by its airmass."),
    F("doApplyExternalPhotoCalib", "bool", False, "Apply an external PhotoCalib from the butler.", status=L),
    F("doApplyExternalSkyWcs", "bool", False, "Apply an external SkyWcs from the butler.", status=L),
    F("doAttachTransmissionCurve", "bool", False, "Attach a transmission curve to the coadd.", status=L),
    F("doCalculatePsf", "bool", False, "Measure the coadd PSF (/psf) from bright isolated stars of the coadd (detectPsfSources, measurePsf), or take modelPsf's Gaussian when too few are found."),
    F("doFilterMorphological", "bool", True, "Find straight streaks among the artifact candidates (a Hough transform, maskStreaks), mark their cores CLIPPED and the band grown by growStreakFp PSF sigma streakMaskName.  mpidcr: on (trail pixels caught 87-89 % -> 100 %, no false streak on four clean fields; docs/lsst-differences.md).", seed=False),
    F("doInputMap", "bool", False, "Write a HealSparse map of the inputs.", status=L),
    F("doInterp", "bool", True, "Interpolate each sub-filter plane over the NO_DATA pixels no visit covers, row by row from the good pixels on each side (interpImage), marking them INTRP with infinite variance."),
    F("doMaskBrightObjects", "bool", False, "Set brightObjectMaskName over the bright-object regions (run --bright-object-mask FILE or bright_object_mask in the manifest: LSST's bright-object mask files or ds9 regions, circles and boxes in sky coordinates)."),
    F("doNImage", "bool", True, "Write the per-sub-filter count of contributing visits (/nimage, /nimage_total).", seed=False),
    F("doOnlineForMean", "bool", False, "LSST's memory-saving accumulation of MEAN: the same result; mpidcr's tiles bound memory already.", status=L),
    F("doPrefilterArtifacts", "bool", True, "Drop artifact candidates with no more than prefilterArtifactsRatio of their pixels free of prefilterArtifactsMaskPlanes (defects, not transients)."),
    F("doPreserveContainedBySource", "bool", False, "Keep artifact candidates lying wholly inside a source of the static model (detectTemplate.preserveThresholdSigma).  mpidcr: off, its DCR-aware threshold (detect.dcrAllowance) keeps sources from being clipped without it (clean fields: no star pixel clipped) while it shielded 69 % of a crowded patch (artifact pixels caught 99.3 % -> 81.9 %); with LSST's threshold (lsstCompat.artifactDetection) it lowers the star pixels clipped from 2.7 % to 1.5 %.", seed=True),
    F("doPsfMatch", "bool", False, "Deprecated in the seed: coadd PSF-matched warps.", status=L),
    F("doScaleWarpVariance", "bool", True, "Rescale each warp's variance so image/sqrt(variance) has unit variance over its background."),
    F("doSelectVisits", "bool", False, "Coadd only visits chosen by an LSST SelectVisitsTask.", status=L),
    F("doSigmaClip", "bool", False, "Deprecated in the seed: same as statistic = MEANCLIP."),
    F("doUsePsfMatchedPolygons", "bool", False, "Use valid polygons of PSF-matched calexps (CompareWarp only).", status=L),
    F("doWrite", "bool", True, "Persist the coadd through the butler (mpidcr always writes its output file).", status=L),
    F("effectiveWavelength", "float", None, f"Effective wavelength of the band in nm (required), within {WAVELENGTH_MIN_NM}–{WAVELENGTH_MAX_NM}.", optional=True, check=_range(WAVELENGTH_MIN_NM, WAVELENGTH_MAX_NM, True, True)),
    F("externalPhotoCalibName", "str", "jointcal", "Gen2 name of the external PhotoCalib.", optional=True, check=_choice("jointcal", "fgcm", "fgcm_tract", None), status=L),
    F("externalSkyWcsName", "str", "jointcal", "Gen2 name of the external SkyWcs.", optional=True, check=_choice("jointcal", None), status=L),
    F("growStreakFp", "float", 5.0, "Grow streak footprints by this many PSF widths.", check=_range(0.0, None)),
    F("hasFakes", "bool", False, "Inputs carry injected fake sources (butler naming only).", status=L),
    F("imageInterpOrder", "int", 1, "Spline order of the sub-pixel shifts (1 bilinear, 3 cubic; 1..5 accepted, 1 and 3 implemented).", check=_range(1, 5)),
    F("includeCalibVar", "bool", False, "Add the PhotoCalib variance to the warp variance.", status=L),
    F("maskPropagationThresholds", "dict", {"SAT": 0.1}, "Per mask plane: set it on the coadd where rejected inputs carrying it exceed this weight fraction.", check=_fractions),
    F("matchingKernelSize", "int", 21, "Size in pixels (odd) of the kernels that PSF-match the warps for artifact rejection (a Gaussian per visit, truncated at 4 sigma or at this size).", check=_odd_positive),
    F("maxFractionEpochsHigh", "float", 0.03, "Artifact rejection: fraction of N epochs added to maxNumEpochs at high N.", check=_range(0.0, 1.0, hi_open=True)),
    F("maxFractionEpochsLow", "float", 0.4, "Artifact rejection: fraction of N epochs allowed at low N.", check=_range(0.0, 1.0, hi_open=True)),
    F("maxNumEpochs", "int", 2, "Artifact rejection: epochs in which a transient may appear and still be masked.", check=_range(0, None)),
    F("maxNumIter", "int", None, "Maximum number of forward-model iterations (at most 1000); None: 3K, and at least 45 for the PSF-aware model (usePsf), whose deconvolution to the reference PSF keeps improving the templates to ~45 iterations (docs/validation.md).", optional=True, check=_range(1, 1000)),
    F("minNumIter", "int", None, "Minimum number of forward-model iterations (at most 1000); None: K.", optional=True, check=_range(1, 1000)),
    F("modelWeightsWidth", "float", 3.0, "Gaussian sigma in pixels (0 to 100) of the region around detected sources that the model may change.", check=_range(0.0, 100.0)),
    F("prefilterArtifactsMaskPlanes", "list", ("NO_DATA", "BAD", "SAT", "SUSPECT"), "Mask planes used by doPrefilterArtifacts."),
    F("prefilterArtifactsRatio", "float", 0.05, "Minimum good-pixel fraction for an artifact candidate to be kept.", check=_range(0.0, 1.0)),
    F("regularizationWidth", "int", 2, "Radius in pixels (1 to 64) of the smallest region the regularizations act on.", check=_range(1, 64)),
    F("regularizeModelFrequency", "float", 4.0, "Maximum relative change between sub-filters (0 disables).", check=_range(0.0, None)),
    F("regularizeModelIterations", "float", 2.0, "Maximum relative change of the model between iterations (0 disables).", check=_range(0.0, None)),
    F("removeMaskPlanes", "list", ("NOT_DEBLENDED", "EDGE"), "Mask planes cleared from the warps before coadding.", seed=("NOT_DEBLENDED",)),
    F("saveLogOutput", "bool", True, "Save the task's log through the butler.", status=L),
    F("saveMetadata", "bool", True, "Save the task's metadata through the butler.", status=L),
    F("sigmaClip", "float", 3.0, "Clipping threshold in sigma of MEANCLIP.", check=_range(0.0, None, lo_open=True)),
    F("spatialThreshold", "float", 0.5, "Artifact rejection: fraction of a candidate's pixels that must be transient outliers.", check=_range(0.0, 1.0)),
    F("splitSubfilters", "bool", True, "Model each sub-filter's DCR by two shifts at 1/4 and 3/4 of its width."),
    F("splitThreshold", "float", 0.1, "Split only where the two shifts differ by at least this many pixels.", check=_range(0.0, None)),
    F("statistic", "str", "MEAN", "Statistic of the static sky model.", check=_choice("MEAN", "MEDIAN", "MEANCLIP"), seed="MEANCLIP"),
    F("streakMaskName", "str", "STREAK", "Mask plane name for streaks."),
    F("subregionSize", "pair", (2000, 2000), "Width, height in pixels of the blocks solved one after another with lsstCompat.subregions (--profile lsst); mpidcr's own fit is one global fit.", check=_pair_positive),
    F("useConvergence", "bool", True, "Stop on convergence; if False run exactly maxNumIter iterations."),
    F("useGlobalExternalPhotoCalib", "bool", True, "Use global rather than per-tract external PhotoCalibs.", status=L),
    F("useGlobalExternalSkyWcs", "bool", True, "Use global rather than per-tract external SkyWcs.", status=L),
    F("useModelWeights", "bool", True, "Let the model change only near detected sources (convergenceMaskPlanes)."),
    F("useProgressiveGain", "bool", True, "Raise the gain above baseGain as the metric converges as predicted."),
    F("warpType", "str", "direct", "Butler warp type to read (direct or psfMatched).", check=_choice("direct", "psfMatched"), status=L),
)


@dataclass(frozen=True)
class SubtaskSpec:
    """A retargetable subtask of the seed, with mpidcr's own fields for it."""

    name: str
    doc: str
    fields: tuple[FieldSpec, ...]
    status: str = "used"


#: The 14 retargetable subtasks of the seed, as nested sections.
SUBTASKS: tuple[SubtaskSpec, ...] = (
    SubtaskSpec("assembleStaticSkyModel", "The static sky model T (first-iteration model).", (
        F("statistic", "str", None, "Override of the top-level statistic for T; None: use it.", optional=True, check=_choice("MEAN", "MEDIAN", "MEANCLIP", None)),
    )),
    SubtaskSpec("detect", "Detection of artifact candidates on each PSF-matched warp − their clipped mean (both signs, no smoothing).", (
        F("thresholdSigma", "float", 7.5, "Candidate pixels lie beyond this many sigma of their own noise (LSST: thresholdValue, pixel_stdev).", check=_range(0.0, None, lo_open=True), seed=5.0),
        F("minPixels", "int", 4, "Smallest candidate footprint, in pixels (before growing).", check=_range(1, None), seed=1),
        F("nSigmaToGrow", "float", 0.4, "Grow candidate footprints by this many sigma of the common PSF.", check=_range(0.0, None)),
        F("dcrAllowance", "float", 0.5, "mpidcr: the threshold's noise also holds this many times the static model's slope times half the visit's DCR across the band (a source's colour moves it that far; LSST: 0, lsstCompat.artifactDetection).", check=_range(0.0, None)),
        F("psfMismatch", "float", 0.05, "mpidcr: the threshold's noise also holds this fraction of the static model (Gaussian PSF matching of real PSFs is not exact; LSST: 0, lsstCompat.artifactDetection).", check=_range(0.0, 1.0)),
    )),
    SubtaskSpec("detectPsfSources", "Detection of the stars the coadd PSF is measured from (doCalculatePsf).", (
        F("thresholdSigma", "float", 50.0, "Stars peak at least this many sigma of the coadd's noise.", check=_range(0.0, None, lo_open=True)),
        F("minPixels", "int", 25, "A star covers at least this many pixels above thresholdSigma / 10 (LSST: 5x5 pixels above its threshold).", check=_range(1, None)),
    )),
    SubtaskSpec("detectTemplate", "Detection of sources on the static model: the convergence pixels when no input carries convergenceMaskPlanes, and the sources that keep artifact candidates inside them (doPreserveContainedBySource).", (
        F("thresholdSigma", "float", 5.0, "Convergence pixels: the static model at least this many sigma of its noise.", check=_range(0.0, None, lo_open=True)),
        F("growRadius", "int", 2, "Convergence pixels: grown by this many pixels (at most 100).", check=_range(0, 100)),
        F("preserveThresholdSigma", "float", 300.0, "doPreserveContainedBySource: sources above this many sigma of the PSF-smoothed, PSF-matched static model (LSST: detectTemplate.thresholdValue 300; brighter sources subtract badly).", check=_range(0.0, None, lo_open=True)),
        F("nSigmaToGrow", "float", 2.4, "doPreserveContainedBySource: grow those sources by this many sigma of the common PSF.", check=_range(0.0, None)),
    )),
    SubtaskSpec("inputMapper", "HealSparse input maps.", (), status=L),
    SubtaskSpec("inputRecorder", "CoaddInputs catalogs of the LSST stack.", (), status=L),
    SubtaskSpec("interpImage", "Interpolation over the pixels no visit covers (doInterp).", (
        F("fallbackValue", "float", None, "Value of rows with no good pixel; None: the plane's median over good pixels, at least 0 (LSST's).", optional=True),
    )),
    SubtaskSpec("maskStreaks", "Streak finding among the artifact candidates (doFilterMorphological): a Hough transform of their line-like pieces.", (
        F("minLengthPixels", "int", 30, "Shortest streak masked, in pixels along the line (30: a 56-pixel trail across a corner of a 128² patch, broken by a star, is found; no false streak on four clean fields).", check=_range(1, None)),
    )),
    SubtaskSpec("measurePsf", "PSF measurement on the coadd (doCalculatePsf): the median of the normalised, re-centred stamps of bright isolated stars.", (
        F("stampSize", "int", 41, "Size in pixels (odd) of the measured PSF image.", check=_odd_positive),
    )),
    SubtaskSpec("measurePsfSources", "LSST source measurement for the PSF.", (), status=L),
    SubtaskSpec("modelPsf", "The coadd PSF when none can be measured (doCalculatePsf), and the PSF artifact rejection assumes when no visit has one.", (
        F("defaultFwhm", "float", 0.7, "FWHM of the fallback Gaussian PSF in arcsec.", check=_range(0.0, None, lo_open=True)),
    )),
    SubtaskSpec("scaleWarpVariance", "Empirical rescaling of warp variance (doScaleWarpVariance).", (
        F("maskPlanes", "list", ("DETECTED", "BAD", "SAT", "NO_DATA", "INTRP"), "Pixels excluded from the noise measurement."),
        F("limit", "float", 10.0, "Largest accepted scale factor (and 1/limit the smallest).", check=_range(1.0, None)),
    )),
    SubtaskSpec("scaleZeroPoint", "Photometric zero-point scaling of the warps: each scaled by 10^(0.4 (zeroPoint - its own)) when every warp has one (MAGZERO, ZEROPT, MAGZPT, PHOTZP, FLUXMAG0 or zeroPoint in the manifest); none: no scaling (LSST's warps are calibrated).", (
        F("zeroPoint", "float", 27.0, "Zero point of the coadd, AB mag of one count.", check=_range(0.0, None)),
    )),
    SubtaskSpec("select", "Visit selection.", (
        F("maxPsfFwhm", "float", None, "Reject visits with a PSF FWHM above this, in arcsec; None: keep all.", optional=True, check=_range(0.0, None, lo_open=True)),
    )),
)

#: the PSF-aware model's default maxNumIter (at least): on the variable-seeing fields of
#: docs/validation.md (0.6–1.2″, one wing Gaussian) its false sources removed went 80 → 84 → 85 %
#: at 30, 45 and 60 iterations, the constant-PSF model's 66 → 69 % from 9 to 30
PSF_AWARE_ITERATIONS = 45

#: mpidcr's own fields (not the seed's)
OWN_FIELDS: tuple[FieldSpec, ...] = (
    F("usePsf", "bool", None, "The PSF-aware forward model: planes at the sharpest visit's PSF, each visit's template blurred to its own PSF by its matching kernel (a Gaussian core and psfWings wing Gaussians; docs/physics.md); every visit needs a PSF.  None: on when every visit has one (not under the lsst profile or lsstCompat.subregions).  On the variable-seeing fields of docs/validation.md it removes 93 % and 84 % of the false sources against 77 % and 66 % for the constant-PSF model, with template star flux within 0.15 %.", optional=True),
    F("psfWings", "int", 1, "PSF-aware model: wing Gaussians (0, 1 or 2) shared by every visit's matching kernel besides its Gaussian core.  A seeing PSF blurred to a broader one needs a kernel with wings (Kolmogorov's transfer functions multiply into another Kolmogorov); with a single Gaussian the planes spread their light to make up the wings and the templates' cores are faint (docs/physics.md).  0: one Gaussian per visit (mpidcr before wave 3).", check=_choice(0, 1, 2)),
    F("psfTolerance", "float", 0.05, "PSF-aware model: visits whose matching-kernel variances (pixels²) lie within twice this share one blur.", check=_range(0.0, 1.0)),
    F("templateInterpOrder", "int", 1, "Spline order (1 or 3) of the shifts that make templates from a model (mpidcr template, evaluate).  1, as the fit shifts (imageInterpOrder): the model reproduces each visit through linear shifts, so its templates are made the same way; order 3 (LSST's) removed 93 % of the dipoles instead of 98 % and left 1.05-3.9x the false sources in PSF-matched differences (docs/validation.md, docs/lsst-differences.md).", check=_choice(1, 3)),
    F("doRejectArtifacts", "bool", True, "CompareWarp artifact rejection (the LSST task always runs it): transient outliers of the PSF-matched warps marked CLIPPED, streaks streakMaskName, and left out of the static model and (unless lsstCompat.clippedInFit) the fit.  docs/physics.md."),
    F("profile", "str", "mpidcr", "Whose behaviour to follow: mpidcr's (published physics, one global fit, rollback on divergence, DCR direction from the WCS) or lsst (DcrAssembleCoaddTask's; docs/lsst-differences.md).", check=_choice("mpidcr", "lsst")),
)

def _compat(name: str, doc: str) -> FieldSpec:
    return F(name, "bool", None, doc + " None: follow profile.", optional=True)

#: mpidcr's own sections: each LSST behaviour selectable on its own
OWN_SECTIONS: tuple[SubtaskSpec, ...] = (
    SubtaskSpec("lsstCompat", "Each behaviour of the LSST task on its own (True: LSST's, False: mpidcr's, None: profile's).", (
        _compat("refraction", "afw's refraction formula: the tan³z term added and 7.75141e-4 in the water-vapour density (Stone and Owens as published: subtracted, 7.75141e4)."),
        _compat("parallacticAngle", "The parallactic angle as afw computes it: from the hour angle (ERA, BORE-RA) and BORE-DEC, or from BORE-AZ/BORE-ALT through ICRS at the visit's time (ERFA's from az/alt differs by 12–27 arcsec)."),
        _compat("rotationDirection", "The DCR direction θ = parallactic angle − BORE-ROTANG, as ip_diffim since Nov 2025, ignoring the warp's WCS."),
        _compat("unsplitShifts", "A sub-filter below splitThreshold shifted by LSST's average of its two (dy, dx) shifts, which mixes the axes."),
        _compat("splitNodes", "LSST's split shifts at 1/4 and 3/4 of a sub-filter's refraction span (mpidcr: the two Gauss-Legendre nodes, 0.211 and 0.789, whose average has the span's variance for light spread evenly over it; LSST's, three quarters of it)."),
        _compat("frequencyRegularization", "LSST's frequency regularization: the previous iteration's planes as reference, zero-padded Gaussians, the noise of the new plane 0 over 5-pixel-shrunk background."),
        _compat("iterationControl", "LSST's loop: at least minNumIter+1 and at most maxNumIter+2 updates, no rollback on divergence, the gain from the median of at most the last 4 estimates."),
        _compat("subregions", "subregionSize blocks solved one after another, each with its own metric, gain and model-weight normalisation (results then depend on subregionSize, not on the ranks)."),
        _compat("templates", "Templates as LSST's buildMatchedExposure makes them: spline order 3, sub-filters always split, the stored planes not amplified again."),
        _compat("outputMask", "The output mask is the static model's alone (mpidcr adds NO_DATA where the model is undetermined)."),
        _compat("artifactDetection", "LSST's artifact candidates and epoch count: the threshold is the pixel noise alone, and every candidate of another visit counts as an epoch (mpidcr allows for the visit's DCR and the PSF mismatch, detect.dcrAllowance and detect.psfMismatch, and does not count other visits' candidates that were found to be artifacts themselves)."),
        _compat("clippedInFit", "The fit uses the CLIPPED and streak pixels (only the static model leaves them out), as LSST's task, which keeps them because DCR makes sources outliers; mpidcr leaves them out of the fit too."),
        _compat("modelWeights", "LSST's model weights: the smoothed source mask over its maximum, below 1 even on compact sources (mpidcr: 1 on the sources, the smooth taper outside them)."),
    )),
)
# fmt: on

#: the seed's fields and subtasks (what an LSST configuration names)
FIELD_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}
SUBTASK_BY_NAME: dict[str, SubtaskSpec] = {s.name: s for s in SUBTASKS}
#: every field and section mpidcr accepts: the seed's and its own
FIELD_SPECS: dict[str, FieldSpec] = {f.name: f for f in (*FIELDS, *OWN_FIELDS)}
SECTION_SPECS: dict[str, SubtaskSpec] = {s.name: s for s in (*SUBTASKS, *OWN_SECTIONS)}
#: LSST subtask field names (in LSST override files) that mean an mpidcr field of the same
#: section: (section, LSST name) → mpidcr name.  thresholdValue is in sigma under LSST's default
#: thresholdType 'stdev', the only kind mpidcr has.
LSST_FIELD_NAMES: dict[tuple[str, str], str] = {
    ("detect", "thresholdValue"): "thresholdSigma",
    ("detectTemplate", "thresholdValue"): "thresholdSigma",
    ("detectPsfSources", "thresholdValue"): "thresholdSigma",
}

#: the LSST behaviours of lsstCompat
LSST_BEHAVIOURS: tuple[str, ...] = tuple(f.name for f in OWN_SECTIONS[0].fields)


def snake_case(name: str) -> str:
    """``dcrNumSubfilters`` → ``dcr_num_subfilters``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _alias_table(names: Iterable[str]) -> dict[str, str]:
    table = {}
    for n in names:
        table[n] = n
        table[snake_case(n)] = n
    return table


_TOP_ALIASES = _alias_table([*FIELD_SPECS, *SECTION_SPECS])


def canonical_name(name: str, table: Mapping[str, str] | None = None, where: str = "") -> str:
    """The camelCase name of a field given either spelling; ConfigError if unknown."""
    table = _TOP_ALIASES if table is None else table
    if name in table:
        return table[name]
    known = sorted({v for v in table.values()})
    close = [k for k in known if k.lower().startswith(name.lower()[:4])] if len(name) >= 4 else []
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    raise ConfigError(f"unknown configuration field '{where}{name}'{hint}; see 'mpidcr config --defaults'")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (messages stay one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Bad(Exception):
    """What a value should have been (raised by the ``_as_*`` converters, turned into a ConfigError)."""


def _as_bool(value: Any, spec: FieldSpec) -> bool:
    if not isinstance(value, bool):
        raise _Bad("a boolean (true or false)")
    return value


def _as_int(value: Any, spec: FieldSpec) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("an integer")
    return value


def _as_float(value: Any, spec: FieldSpec) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("a number")
    try:
        out = float(value)
    except OverflowError:
        raise _Bad("a finite number") from None
    if not math.isfinite(out):
        raise _Bad("a finite number")
    return out


def _as_str(value: Any, spec: FieldSpec) -> str:
    if not isinstance(value, str):
        raise _Bad("a string")
    return value


def _as_list(value: Any, spec: FieldSpec) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _Bad("a list of strings")
    return tuple(value)


def _as_pair(value: Any, spec: FieldSpec) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Bad("a list of 2 integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _Bad("a list of 2 integers")
    return (value[0], value[1])


def _as_dict(value: Any, spec: FieldSpec) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Bad("a table (mapping)")
    numeric = all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                  for k, v in value.items())  # fmt: skip
    if spec.default and not numeric:
        raise _Bad("a table of mask-plane name = number")
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in value.items()}


_CONVERTERS: dict[str, Callable[[Any, FieldSpec], Any]] = {
    "bool": _as_bool,
    "int": _as_int,
    "float": _as_float,
    "str": _as_str,
    "list": _as_list,
    "pair": _as_pair,
    "dict": _as_dict,
}


def coerce(spec: FieldSpec, value: Any, where: str = "") -> Any:
    """Check ``value`` against ``spec`` and return it in canonical form.

    Ints are accepted for floats; strings for lists are split on commas; lists
    become tuples.  Raises ConfigError naming the field and the allowed values.
    """
    full = where + spec.name
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"configuration field '{full}' may not be None; expected {spec.type_name}")
    try:
        out = _CONVERTERS[spec.kind](value, spec)
    except _Bad as exc:
        raise ConfigError(f"configuration field '{full}' = {_short(value)}: expected {exc}") from None
    if spec.check is not None:
        allowed = spec.check(out)
        if allowed is not None:
            raise ConfigError(f"configuration field '{full}' = {_short(value)} is out of range; expected {allowed}")
    return out


class Section:
    """Values of one subtask section, read as attributes (``cfg.detect.thresholdSigma``)."""

    def __init__(self, spec: SubtaskSpec, values: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_values", {f.name: copy.deepcopy(f.default) for f in spec.fields})
        object.__setattr__(self, "_aliases", _alias_table(f.name for f in spec.fields))
        for k, v in (values or {}).items():
            self.set(k, v)

    def set(self, name: str, value: Any) -> None:
        spec: SubtaskSpec = self._spec
        canon = canonical_name(name, self._aliases, where=spec.name + ".")
        fspec = next(f for f in spec.fields if f.name == canon)
        self._values[canon] = coerce(fspec, value, where=spec.name + ".")

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        aliases = object.__getattribute__(self, "_aliases")
        if name in aliases:
            return values[aliases[name]]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def as_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self._values.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return dict(v)
    return v


class DcrConfig:
    """Every setting of a DCR coadd; attribute access by camelCase or snake_case name.

    Assignments are checked immediately (``cfg.dcrNumSubfilters = 1`` raises
    ConfigError).  Derived quantities that depend on K (``min_iterations``,
    ``max_iterations``, ``base_gain``) are properties.
    """

    def __init__(self, **values: Any):
        object.__setattr__(self, "_values", {f.name: copy.deepcopy(f.default) for f in FIELD_SPECS.values()})
        object.__setattr__(self, "_sections", {s.name: Section(s) for s in SECTION_SPECS.values()})
        self.update(values)

    # -- access ---------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """Set one field (``name`` or ``section.name``), checking type and range."""
        head, _, tail = name.partition(".")
        canon = canonical_name(head)
        if canon in SECTION_SPECS:
            if tail:
                self._sections[canon].set(tail, value)
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    self._sections[canon].set(k, v)
            else:
                raise ConfigError(f"configuration section '{canon}' needs a table of its fields")
            return
        if tail:
            raise ConfigError(f"configuration field '{canon}' has no sub-field '{tail}'")
        self._values[canon] = coerce(FIELD_SPECS[canon], value)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields (and sections, as nested mappings) from ``values``, each checked."""
        for k, v in values.items():
            self.set(k, v)

    def __getattr__(self, name: str) -> Any:
        try:
            canon = _TOP_ALIASES[name]
        except KeyError:
            raise AttributeError(name) from None
        if canon in SECTION_SPECS:
            return object.__getattribute__(self, "_sections")[canon]
        return object.__getattribute__(self, "_values")[canon]

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def copy(self) -> DcrConfig:
        """An independent copy."""
        return DcrConfig.from_dict(self.as_dict())

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as plain values (the field specs hold check closures); used by MPI broadcasts
        return (DcrConfig.from_dict, (self.as_dict(),))

    # -- derived --------------------------------------------------------------
    @property
    def num_subfilters(self) -> int:
        """K, the number of sub-filters (dcrNumSubfilters)."""
        return int(self._values["dcrNumSubfilters"])

    @property
    def min_iterations(self) -> int:
        """minNumIter, or K when unset."""
        v = self._values["minNumIter"]
        return self.num_subfilters if v is None else int(v)

    @property
    def max_iterations(self) -> int:
        """maxNumIter, or 3K when unset (the constant-PSF model's; see :meth:`max_iterations_for`)."""
        return self.max_iterations_for(psf_aware=False)

    def max_iterations_for(self, psf_aware: bool) -> int:
        """maxNumIter, or when unset 3K — and at least :data:`PSF_AWARE_ITERATIONS` for the
        PSF-aware model."""
        v = self._values["maxNumIter"]
        if v is not None:
            return int(v)
        return max(3 * self.num_subfilters, PSF_AWARE_ITERATIONS) if psf_aware else 3 * self.num_subfilters

    @property
    def base_gain(self) -> float:
        """baseGain, or 1/(K−1) when unset."""
        v = self._values["baseGain"]
        return 1.0 / (self.num_subfilters - 1) if v is None else float(v)

    @property
    def static_statistic(self) -> str:
        """Statistic of the static sky model: subtask override, doSigmaClip, then statistic."""
        override = self._sections["assembleStaticSkyModel"].statistic
        if override is not None:
            return override
        return "MEANCLIP" if self._values["doSigmaClip"] else self._values["statistic"]

    def validate(self, require_band: bool = True) -> DcrConfig:
        """Cross-field checks; with ``require_band`` the band must be given."""
        v = self._values
        if require_band:
            for name in ("effectiveWavelength", "bandwidth"):
                if v[name] is None:
                    raise ConfigError(
                        f"configuration field '{name}' is required (in nm); set it in the manifest or with --set {name}=..."
                    )
        if v["effectiveWavelength"] is not None and v["bandwidth"] is not None:
            lo = v["effectiveWavelength"] - v["bandwidth"] / 2
            hi = v["effectiveWavelength"] + v["bandwidth"] / 2
            if lo <= WAVELENGTH_MIN_NM or hi >= WAVELENGTH_MAX_NM:
                raise ConfigError(
                    f"configuration fields 'effectiveWavelength'/'bandwidth' give a band {lo:.1f}–{hi:.1f} nm "
                    f"outside the refraction model's range ({WAVELENGTH_MIN_NM}, {WAVELENGTH_MAX_NM}) nm"
                )
        if self.min_iterations > self.max_iterations:
            raise ConfigError(
                f"configuration field 'minNumIter' = {self.min_iterations} exceeds 'maxNumIter' = {self.max_iterations}"
            )
        if v["imageInterpOrder"] not in (1, 3):
            raise ConfigError(
                f"configuration field 'imageInterpOrder' = {v['imageInterpOrder']}: mpidcr implements 1 and 3"
            )
        return self

    def lsst(self, behaviour: str) -> bool:
        """Whether LSST's ``behaviour`` (a field of lsstCompat) is in effect: its own value, else the profile's."""
        if behaviour not in LSST_BEHAVIOURS:
            raise ConfigError(f"unknown LSST behaviour '{behaviour}' (one of {', '.join(LSST_BEHAVIOURS)})")
        value = getattr(self._sections["lsstCompat"], behaviour)
        return self._values["profile"] == "lsst" if value is None else bool(value)

    def shift_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`mpidcr.dcr.dcr_shifts` this configuration asks for."""
        return {
            "split_subfilters": bool(self._values["splitSubfilters"]),
            "split_threshold": float(self._values["splitThreshold"]),
            "formula": "afw" if self.lsst("refraction") else "stone",
            "lsst_unsplit": self.lsst("unsplitShifts"),
            "split_node": SPLIT_NODE_LSST if self.lsst("splitNodes") else SPLIT_NODE_GAUSS,
        }

    def notices(self) -> list[str]:
        """One warning per field set away from its default that has no effect here (an LSST-only
        field, a subregion size without subregions)."""
        out = []
        for f in FIELDS:
            if f.status != "used" and self._values[f.name] != f.default:
                out.append(_notice(f.name, f.status))
        for s in SUBTASKS:
            sec = self._sections[s.name]
            for f in s.fields:
                if "lsst-only" in (s.status, f.status) and sec._values[f.name] != f.default:
                    out.append(_notice(f"{s.name}.{f.name}", "lsst-only"))
        if self._values["subregionSize"] != FIELD_SPECS["subregionSize"].default and not self.lsst("subregions"):
            out.append("configuration field 'subregionSize' acts only with lsstCompat.subregions (--profile lsst); "
                       "ignored")  # fmt: skip
        return out

    # -- conversion -----------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Every field and section as plain Python values (sections as nested dicts)."""
        d: dict[str, Any] = {k: _plain(v) for k, v in self._values.items()}
        for name, sec in self._sections.items():
            d[name] = sec.as_dict()
        return d

    def to_json(self) -> str:
        """The canonical JSON of :meth:`as_dict` (sorted keys): what a model file records."""
        return json.dumps(self.as_dict(), sort_keys=True)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON, used to match checkpoints to runs."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DcrConfig:
        """A configuration from :meth:`as_dict`'s output (or any mapping of fields)."""
        return cls(**dict(d))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DcrConfig) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if v != FIELD_SPECS[k].default}
        return f"DcrConfig({changed})"


def _notice(name: str, status: str) -> str:
    return f"configuration field '{name}' only has a meaning inside the LSST middleware; ignored"


# -- loading -------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """Parse the value of a ``--set name=value`` override.

    Python/TOML literals (``3``, ``0.5``, ``[1, 2]``, ``'x'``), ``true``/``false``,
    ``none``/``null``; anything else is a plain string.
    """
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "detect.thresholdSigma=4"]`` → ``{"a": 1, "detect.thresholdSigma": 4.0}``."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"override '{item}' is not of the form name=value")
        out[name.strip()] = parse_value(value)
    return out


def resolve_config(
    base: Mapping[str, Any] | None = None,
    file_values: Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> DcrConfig:
    """A DcrConfig from ``base`` values, then a file's values, then overrides (later ones win).

    Notices for LSST-only fields are logged once here: a warning for each one set away from its
    default.  Reading files is :func:`mpidcr.io.configfile.load_config`'s.
    """
    cfg = DcrConfig()
    if base:
        cfg.update(base)
    if file_values:
        cfg.update(file_values)
    cfg.update(overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
    for msg in cfg.notices():
        log.warning(msg)
    return cfg


# -- documentation ---------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        v = list(v)
    return repr(v)


#: what the ``acts`` column says for each status
ACTS = {"used": "yes", "lsst-only": "no: LSST middleware"}


def _default_rows() -> list[tuple[str, str, str, str, str, str]]:
    """(name, type, effective default, seed default (``=``: the same; ``n/a``: mpidcr's own field),
    acts, doc) of every field and section: the seed's, then mpidcr's own."""

    def row(name: str, f: FieldSpec, status: str, own: bool) -> tuple[str, str, str, str, str, str]:
        seed = "n/a" if own else "=" if f.seed == SAME else _fmt(f.seed)
        return (name, f.type_name, _fmt(f.default), seed, ACTS[status], f.doc)

    rows = [row(f.name, f, f.status, f in OWN_FIELDS) for f in (*FIELDS, *OWN_FIELDS)]
    for s in (*SUBTASKS, *OWN_SECTIONS):
        own = s in OWN_SECTIONS
        rows.append((f"[{s.name}]", "section", "", "n/a" if own else "", ACTS[s.status], s.doc))
        rows += [row(f"{s.name}.{f.name}", f, f.status if s.status == "used" else s.status, own) for f in s.fields]
    return rows


_HEADER = ("field", "type", "default", "seed default", "acts", "description")


def defaults_table(markdown: bool = False) -> str:
    """Every field with type, effective default, the seed's raw default where it differs (``=``
    where not), whether mpidcr acts on it, and doc (``mpidcr config --defaults``)."""
    rows = _default_rows()
    if markdown:
        lines = ["| " + " | ".join(_HEADER) + " |", "|---|---|---|---|---|---|"]
        for r in rows:
            cells = (f"`{r[0]}`", r[1], f"`{r[2]}`" if r[2] else "", f"`{r[3]}`" if r[3] not in ("", "=", "n/a") else r[3],
                     r[4], r[5])  # fmt: skip
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"
    table = [_HEADER, *rows]
    w = [max(len(r[i]) for r in table) for i in range(5)]
    return "\n".join("  ".join(f"{r[i]:<{w[i]}}" for i in range(5)) + f"  {r[5]}" for r in table) + "\n"
