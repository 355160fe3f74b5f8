"""Raw instrument headers (astro-metadata-translator's own test data, tests/data/instrument_headers/)
translated into the visit metadata a run needs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from mpidcr.dcr import Site
from mpidcr.errors import InputError
from mpidcr.io.warps import resolve_geometry, scan_warp, write_lsst_warp

pytest.importorskip("astro_metadata_translator")
HEADERS = Path(__file__).resolve().parent / "data" / "instrument_headers"


class _PropertyListLoader(yaml.SafeLoader):
    """The headers are LSST PropertyList dumps: [key, type, value, comment] rows."""


_PropertyListLoader.add_constructor("lsst.daf.base.PropertyList", lambda loader, node: loader.construct_sequence(node, deep=True))


def _header(name: str) -> dict:
    rows = yaml.load((HEADERS / f"fitsheader-{name}.yaml").read_text(), Loader=_PropertyListLoader)
    structural = ("SIMPLE", "EXTEND", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "XTENSION", "COMMENT", "HISTORY")
    return {row[0]: row[2] for row in rows if row[0] not in structural}


def _warp(tmp_path: Path, name: str) -> Path:
    """A small warp whose primary header is the instrument's raw header."""
    path = tmp_path / f"{name}.fits"
    write_lsst_warp(path, np.zeros((8, 8)), np.ones((8, 8)), np.zeros((8, 8), np.int32), {"NO_DATA": 8}, {})
    with fits.open(path, mode="update") as hdul:
        for key, value in _header(name).items():
            if isinstance(value, (bool, int, float, str)):
                hdul[0].header[key if len(key) <= 8 and "-" not in key else f"HIERARCH {key}"] = value
    return path


@pytest.mark.parametrize(
    "name, instrument",
    [("decam", "DECam"), ("hsc", "HSC"), ("megaprime", "MegaPrime"), ("suprimecam-CORR40535770", "SuprimeCam"),
     ("sdss-fpC-006377-g4-0399", "SDSS")],
)
def test_instrument_headers_give_the_visit_metadata(tmp_path, caplog, name, instrument):
    from astro_metadata_translator import ObservationInfo

    path = _warp(tmp_path, name)
    from mpidcr.io.metadata import _sites_offline

    _sites_offline()  # (as mpidcr does: SDSS's translator falls back on its own site offline)
    expected = ObservationInfo(_header(name), pedantic=False)
    with caplog.at_level(logging.INFO, logger="mpidcr"):
        info = resolve_geometry(scan_warp(path), Site())
    meta = info.meta
    assert meta["elevation"] == pytest.approx(expected.altaz_begin.alt.deg)
    assert meta["airmass"] == pytest.approx(expected.boresight_airmass)
    assert meta["latitude"] == pytest.approx(expected.location.lat.deg)
    if expected.pressure is not None:  # (SDSS's headers carry no weather: the standard atmosphere then)
        assert meta["pressure"] == pytest.approx(expected.pressure.to_value("Pa"))
    assert meta["visit"] == str(expected.visit_id)
    assert -180.0 <= meta["parallacticAngle"] <= 180.0
    said = [r.getMessage() for r in caplog.records if "translated" in r.getMessage()]
    assert len(said) == 1 and instrument in said[0]


def test_manifest_overrides_win_over_the_translation(tmp_path):
    path = _warp(tmp_path, "decam")
    info = resolve_geometry(scan_warp(path, {"airmass": 1.9, "parallacticAngle": 20.0}), Site())
    assert info.meta["airmass"] == 1.9 and info.meta["parallacticAngle"] == 20.0
    assert info.meta["latitude"] == pytest.approx(-30.166, abs=0.01)  # the rest still translated


def test_a_header_nobody_can_read_is_one_line(tmp_path):
    path = tmp_path / "bare.fits"
    write_lsst_warp(path, np.zeros((8, 8)), np.ones((8, 8)), np.zeros((8, 8), np.int32), {"NO_DATA": 8}, {})
    with pytest.raises(InputError, match=r"bare.fits: no elevation \(BORE-ALT\)"):
        resolve_geometry(scan_warp(path), Site())
