"""A test oracle: the core of the LSST task DcrAssembleCoaddTask in plain numpy/scipy.

Written for mpidcr's tests from the published algorithm of lsst/drp_tasks
(``dcr_assemble_coadd.py``), lsst/ip_diffim (``dcrModel.py``) and lsst/afw (``_refraction.py``);
our own code, deliberately simple and slow: whole arrays, one step at a time, every step where
the task does it.  It stands in for the task, which needs the LSST stack, in the parity tests of
``mpidcr run --profile lsst``.

What it covers: the visits' DCR shifts (afw's refraction; θ = parallactic − rotation angle),
the per-sub-filter weights (calculateNImage), the subregion loop with its iteration control and
gain, the update (residuals, iteration and frequency regularization, conditioning, model
weights) and the convergence metric.  Not covered: artifact rejection (findArtifacts), the PSF,
the butler.  Arrays are (y, x); models are lists of K images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- refraction (afw)


def _water_vapour_pressure_pa(temperature_c: float, humidity: float) -> float:
    """Stone (1996) eqs 18 and 20: dew point from T and RH, then its vapour pressure (Pa)."""
    x = math.log(humidity / 100.0)
    dew = 238.3 * ((temperature_c + 238.3) * x + 17.2694 * temperature_c) / (
        (temperature_c + 238.3) * (17.2694 - x) - 17.2694 * temperature_c
    )
    coefficients = (4.50874, 0.341724, 0.0106778, 0.184889e-3, 0.238294e-5, 0.203447e-7)
    return sum(c * dew**i for i, c in enumerate(coefficients)) * 133.32239


def _refractivity_1e8(wavelength_nm: float, temperature_c: float, pressure_pa: float, humidity: float) -> float:
    """(n − 1)·1e8 as afw computes it (its water term uses 7.75141e-4/T³)."""
    kelvin = temperature_c + 273.15
    vapour_mbar = _water_vapour_pressure_pa(temperature_c, humidity) / 100.0
    dry_mbar = pressure_pa / 100.0 - vapour_mbar
    dry = (1.0 + dry_mbar * (57.90e-8 - 9.3250e-4 / kelvin + 0.25844 / kelvin**2)) * dry_mbar / kelvin
    wet_poly = -2.37321e-3 + 2.23366 / kelvin - 710.792 / kelvin**2 + 7.75141e-4 / kelvin**3
    wet = (1.0 + vapour_mbar * (1.0 + 3.7e-4 * vapour_mbar) * wet_poly) * vapour_mbar / kelvin
    sigma2 = (1e3 / wavelength_nm) ** 2
    dry_term = 2371.34 + 683939.7 / (130.0 - sigma2) + 4547.3 / (38.9 - sigma2)
    wet_term = 6487.31 + 58.058 * sigma2 - 0.71150 * sigma2**2 + 0.08851 * sigma2**3
    return dry_term * dry + wet_term * wet


def afw_refraction_arcsec(wavelength_nm: float, elevation_deg: float, weather: tuple[float, float, float],
                          latitude_deg: float, height_m: float) -> float:  # fmt: skip
    """afw's refraction (arcsec) at one wavelength; weather = (T °C, P Pa, RH %)."""
    temperature_c, pressure_pa, humidity = weather
    n1 = _refractivity_1e8(wavelength_nm, temperature_c, pressure_pa, humidity) / 1e8
    beta = 4.5908e-6 * (temperature_c + 273.15)
    lat = math.radians(latitude_deg)
    gravity = 1.0 + 0.005302 * math.sin(lat) ** 2 - 0.00000583 * math.sin(2.0 * lat) ** 2 - 0.000000315 * height_m
    tan_z = math.tan(math.pi / 2.0 - math.radians(elevation_deg))
    radians = n1 * gravity * (1.0 - beta) * tan_z + n1 * gravity * (beta - n1 / 2.0) * tan_z**3
    return math.degrees(radians) * 3600.0


@dataclass
class Visit:
    """What the task reads of a visit: its warp and its visitInfo."""

    image: np.ndarray
    mask: np.ndarray
    elevation: float  # deg
    parallactic_angle: float  # deg
    rotation_angle: float  # deg
    weather: tuple[float, float, float]  # T °C, P Pa, RH %
    latitude: float
    height: float


def calculate_dcr(visit: Visit, wavelength: float, bandwidth: float, K: int, pixel_scale: float,
                  split: bool) -> list:  # fmt: skip
    """Per sub-filter (dy, dx) in pixels, or ((dy0, dx0), (dy1, dx1)) when ``split``."""
    theta = math.radians(visit.parallactic_angle - visit.rotation_angle)
    ref = afw_refraction_arcsec(wavelength, visit.elevation, visit.weather, visit.latitude, visit.height)
    out = []
    step = bandwidth / K
    for lo in np.linspace(wavelength - bandwidth / 2, wavelength + bandwidth / 2, K, endpoint=False):
        d0 = (afw_refraction_arcsec(lo, visit.elevation, visit.weather, visit.latitude, visit.height) - ref) / pixel_scale
        d1 = (afw_refraction_arcsec(lo + step, visit.elevation, visit.weather, visit.latitude, visit.height)
              - ref) / pixel_scale  # fmt: skip
        if split:
            a, b = 0.75 * d0 + 0.25 * d1, 0.25 * d0 + 0.75 * d1
            out.append(((a * math.cos(theta), a * math.sin(theta)), (b * math.cos(theta), b * math.sin(theta))))
        else:
            mid = (d0 + d1) / 2.0
            out.append((mid * math.cos(theta), mid * math.sin(theta)))
    return out


def apply_dcr(image: np.ndarray, dcr, inverse: bool = False, split: bool = False, threshold: float = 0.0,
              order: int = 1) -> np.ndarray:  # fmt: skip
    """Shift ``image`` by one sub-filter's DCR (the task's applyDcr, order 1: no prefilter)."""
    sign = -1.0 if inverse else 1.0
    if split:
        first, second = dcr
        if np.max(np.abs(np.subtract(first, second))) >= threshold:
            a = ndimage.shift(image, [sign * s for s in first], order=order, prefilter=False)
            b = ndimage.shift(image, [sign * s for s in second], order=order, prefilter=False)
            return (a + b) / 2.0
        dcr = (np.mean(first), np.mean(second))  # the task's average of an unsplit pair (mixes the axes)
    return ndimage.shift(image, [sign * s for s in dcr], order=order, prefilter=False)


# ----------------------------------------------------------------------------- the task
@dataclass
class OracleConfig:
    K: int = 3
    effective_wavelength: float = 476.31
    bandwidth: float = 147.0
    pixel_scale: float = 0.2
    bad_bits: int = 0
    detected_bit: int = 0
    accelerate: float = 3.0
    split: bool = True
    split_threshold: float = 0.1
    reg_iter: float = 2.0
    reg_freq: float = 4.0
    reg_width: int = 2
    model_weights: bool = True
    model_weights_width: float = 3.0
    base_gain: float | None = None
    progressive_gain: bool = True
    threshold: float = 0.001
    min_iter: int | None = None
    max_iter: int | None = None
    subregion: tuple[int, int] = (2000, 2000)  # width, height


@dataclass
class Block:
    """One subregion's solve: its boxes ((y0, y1, x0, x1)), the model after every update, metrics."""

    box: tuple[int, int, int, int]
    grown: tuple[int, int, int, int]
    updates: list[list[np.ndarray]] = field(default_factory=list)  # the block's pixels, K planes
    metrics: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)


def _crop(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    return a[box[0] : box[1], box[2] : box[3]]


class LsstOracle:
    """The task on ``visits`` with the static model ``T`` (image, mask) and ``cfg``."""

    def __init__(self, visits: list[Visit], T_image: np.ndarray, T_mask: np.ndarray, cfg: OracleConfig):
        self.visits, self.cfg = visits, cfg
        self.T, self.T_mask = np.asarray(T_image, np.float64), np.asarray(T_mask)
        self.K = cfg.K
        self.shape = self.T.shape
        self.min_iter = cfg.min_iter or cfg.K
        self.max_iter = cfg.max_iter or 3 * cfg.K
        self.mean_dcr = [calculate_dcr(v, cfg.effective_wavelength, cfg.bandwidth, cfg.K, cfg.pixel_scale, False)
                         for v in visits]  # fmt: skip
        self.split_dcr = [calculate_dcr(v, cfg.effective_wavelength, cfg.bandwidth, cfg.K, cfg.pixel_scale,
                                        cfg.split) for v in visits]  # fmt: skip
        self.buffer = int(np.ceil(max(np.max(np.abs(d)) for d in self.mean_dcr)) + 1)
        self.models = [self.T / cfg.K for _ in range(cfg.K)]
        self.weights = self._dcr_weights()
        self.blocks: list[Block] = []

    # -- calculateNImage: 1 / Σ_v reverse-shifted good-pixel indicator, where every sub-filter has > 1
    def _dcr_weights(self) -> list[np.ndarray]:
        sums = [np.zeros(self.shape) for _ in range(self.K)]
        for v, visit in enumerate(self.visits):
            good = ((visit.mask & self.cfg.bad_bits) == 0).astype(np.float64)
            for k in range(self.K):
                sums[k] += apply_dcr(good, self.mean_dcr[v][k], inverse=True)
        ok = np.all([s > 1.0 for s in sums], axis=0)
        return [np.where(ok, 1.0 / np.where(ok, s, 1.0), 0.0) for s in sums]

    def _reference(self, box) -> np.ndarray:
        return np.mean([_crop(m, box) for m in self.models], axis=0)

    def _template(self, v: int, box) -> np.ndarray:
        """buildMatchedTemplate over ``box`` from the models cropped to it."""
        cfg = self.cfg
        planes = [_crop(m, box) for m in self.models]
        if cfg.accelerate > 1:
            ref = np.mean(planes, axis=0)
            planes = [(p - ref) * cfg.accelerate + ref for p in planes]
        return sum(apply_dcr(p, self.split_dcr[v][k], split=cfg.split, threshold=cfg.split_threshold)
                   for k, p in enumerate(planes))  # fmt: skip

    def _noise(self, image: np.ndarray, box, margin: int) -> float:
        """calculateNoiseCutoff: std of ``image`` (on ``box``) over T's background, ``margin`` inside."""
        y0, y1, x0, x1 = box
        inner = (y0 + margin, y1 - margin, x0 + margin, x1 - margin)
        values = image[margin : image.shape[0] - margin, margin : image.shape[1] - margin]
        background = (_crop(self.T_mask, inner) & (self.cfg.bad_bits | self.cfg.detected_bit)) == 0
        return float(np.std(values[background]))

    def _sub_exposures(self, box) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """loadSubExposures: (image with bad pixels 0, weight 1/0, mask) of every visit on ``box``."""
        out = []
        for visit in self.visits:
            mask = _crop(visit.mask, box)
            good = (mask & self.cfg.bad_bits) == 0
            out.append((np.where(good, _crop(visit.image, box), 0.0), good.astype(np.float64), mask))
        return out

    def convergence(self, exposures, grown, box) -> float:
        """calculateConvergence over ``box`` (exposures on ``grown``)."""
        whole = (0, self.shape[0], 0, self.shape[1])
        significance = np.abs(self._reference(box)) + 3.0 * self._noise(self.models[1], whole, self.buffer)
        if np.max(significance) == 0:
            significance = significance + 1.0
        local = (box[0] - grown[0], box[1] - grown[0], box[2] - grown[2], box[3] - grown[2])
        total = 0.0
        for v, (image, _, mask) in enumerate(exposures):
            image, mask = _crop(image, local), _crop(mask, local)
            template = self._template(v, box)
            diff = np.abs(image - template) * significance
            ref = np.abs(image + template) * significance / 2.0
            use = np.isfinite(diff) & ((mask & self.cfg.bad_bits) == 0) & ((mask & self.cfg.detected_bit) > 0)
            total += float(np.sum(diff[use]) / np.sum(ref[use])) if np.any(use) else 0.0
        return total / len(exposures)

    def gain(self, metrics: list[float], gains: list[float]) -> float:
        """calculateGain (appends the gain to ``gains``)."""
        cfg = self.cfg
        base = cfg.base_gain if cfg.base_gain is not None else 1.0 / (cfg.K - 1)
        n = len(metrics)
        if cfg.progressive_gain and n > 2:
            estimates = np.array([((1 + gains[i]) * metrics[i + 1] - metrics[i]) / gains[i] for i in range(n - 1)])
            estimates[estimates < 0] = 0
            final = float(np.median(estimates[max(n - 5, 0) :]))
            last_gain, last, new = gains[-1], metrics[-2], metrics[-1]
            predicted = (final * last_gain + last) / (1.0 + last_gain)
            delta = (predicted - new) / ((last - final) / (1 + last_gain))
            gain = max(base, ((1 - abs(delta)) + last_gain) / 2.0)
        else:
            gain = base
        gains.append(gain)
        return gain

    @staticmethod
    def thresholds(image: np.ndarray, high: np.ndarray, low: np.ndarray, width: int) -> None:
        """applyImageThresholds, in place: clamp openings of the pixels beyond the thresholds."""
        structure = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), width)
        above = ndimage.binary_opening(image > high, structure=structure) if width > 0 else image > high
        image[above] = high[above]
        below = ndimage.binary_opening(image < low, structure=structure) if width > 0 else image < low
        image[below] = low[below]

    def _regularize_frequency(self, planes: list[np.ndarray], grown) -> list[np.ndarray]:
        cfg = self.cfg
        width = cfg.reg_width
        noise = self._noise(planes[0], grown, 5) / (2.0 * width)
        ref = self._reference(grown)
        bad = np.isnan(ref) | (ref <= 0.0)
        if np.all(bad):
            return planes
        ref[bad] = 0.0
        smooth_ref = ndimage.gaussian_filter(ref, width, mode="constant") + 3.0 * noise
        out = []
        for p in planes:
            self.thresholds(p, smooth_ref * np.sqrt(cfg.reg_freq), smooth_ref / np.sqrt(cfg.reg_freq), width)
            relative = (ndimage.gaussian_filter(p, width, mode="constant") + 3.0 * noise) / smooth_ref
            relative = relative + 3.0 * (relative - ndimage.gaussian_filter(relative, width / 3.0))
            out.append(relative * ref)
        return out

    def update(self, exposures, box, grown, gain: float, model_weights) -> None:
        """dcrAssembleSubregion: one update of the block ``box`` from the exposures on ``grown``."""
        cfg = self.cfg
        residual_sums = [np.zeros(exposures[0][0].shape) for _ in range(self.K)]
        for v, (image, weight, _) in enumerate(exposures):
            residual = (image - self._template(v, grown)) * weight
            for k in range(self.K):
                residual_sums[k] += apply_dcr(residual, self.mean_dcr[v][k], inverse=True)
        new = []
        for k in range(self.K):
            old = _crop(self.models[k], grown)
            plane = old + residual_sums[k] * _crop(self.weights[k], grown)
            bad = ~np.isfinite(plane)
            plane[bad] = old[bad]
            if cfg.reg_iter > 0:
                self.thresholds(plane, np.abs(old) * cfg.reg_iter, old / cfg.reg_iter, cfg.reg_width)
            new.append(plane)
        if cfg.reg_freq > 0:
            new = self._regularize_frequency(new, grown)
        T = _crop(self.T, grown)
        for k in range(self.K):
            plane = (new[k] * gain + _crop(self.models[k], grown)) / (1.0 + gain)
            if model_weights is not None:
                plane = plane * model_weights + T * (1.0 - model_weights) / self.K
            new[k] = plane
        local = (box[0] - grown[0], box[1] - grown[0], box[2] - grown[2], box[3] - grown[2])
        for k in range(self.K):
            self.models[k][box[0] : box[1], box[2] : box[3]] = _crop(new[k], local)

    def _model_weights(self, grown):
        if not self.cfg.model_weights:
            return None
        w = ((_crop(self.T_mask, grown) & self.cfg.detected_bit) > 0).astype(np.float64)
        w = ndimage.gaussian_filter(w, self.cfg.model_weights_width)
        return w / np.max(w)

    def run(self) -> LsstOracle:
        """The subregion loop of the task's run()."""
        cfg = self.cfg
        ny, nx = self.shape
        width, height = cfg.subregion
        for y0 in range(0, ny, height):
            for x0 in range(0, nx, width):
                box = (y0, min(y0 + height, ny), x0, min(x0 + width, nx))
                grown = (max(box[0] - self.buffer, 0), min(box[1] + self.buffer, ny),
                         max(box[2] - self.buffer, 0), min(box[3] + self.buffer, nx))  # fmt: skip
                self.blocks.append(self._solve_block(box, grown))
        return self

    def _solve_block(self, box, grown) -> Block:
        block = Block(box, grown)
        weights = self._model_weights(grown)
        exposures = self._sub_exposures(grown)
        metric = self.convergence(exposures, grown, box)
        block.metrics.append(metric)
        check, n = 1.0, 0
        while check > self.cfg.threshold or n <= self.min_iter:
            gain = self.gain(block.metrics, block.gains)
            self.update(exposures, box, grown, gain, weights)
            block.updates.append([_crop(m, box).copy() for m in self.models])
            metric = self.convergence(exposures, grown, box)
            if metric == 0:
                break
            check = (block.metrics[-1] - metric) / metric
            if check < 0 and n > self.min_iter:
                block.metrics.append(metric)  # (the task does not record it; kept here for the tests)
                break
            block.metrics.append(metric)
            if n > self.max_iter:
                break
            n += 1
        return block
