"""Partial coverage and missing pixels: NaN/Inf image or variance is NO_DATA for that visit only."""

import h5py
import numpy as np
import pytest

from .helpers import cli, edit_warp, warps_of


def _model(path):
    with h5py.File(path) as f:
        return {k: f[k][...] for k in ("model", "coadd/variance", "coadd/image", "coadd/mask")}, dict(f.attrs)


def _nan_columns(columns, image=True, variance=True):
    def edit(hdul):
        bit = 1 << int(hdul["MASK"].header["MP_NO_DATA"])
        if image:
            hdul["IMAGE"].data[:, columns] = np.nan
        if variance:
            hdul["VARIANCE"].data[:, columns] = np.nan
        hdul["MASK"].data[:, columns] |= bit

    return edit


# detection on the static model (the convergence pixels when the warps carry no DETECTED plane) is
# where non-finite variance used to switch the DCR model off: the significance was 0 there
NO_DETECTED = ["--set", "removeMaskPlanes=NOT_DEBLENDED,DETECTED"]


@pytest.fixture(scope="module")
def reference(field, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    from mpidcr.cli import main

    assert main(["-q", "run", str(field[0] / "manifest.toml"), "-o", str(out), *NO_DETECTED]) == 0
    return _model(out)


def _structure(model, columns):
    """RMS of the sub-filter planes' departures from their mean in ``columns``: the DCR signal."""
    d = model - model.mean(axis=0)
    return float(np.sqrt(np.mean(d[:, :, columns] ** 2)))


@pytest.mark.parametrize("image", [True, False], ids=["image+variance", "variance-only"])
def test_partial_nodata_keeps_the_dcr_model(field_copy, reference, tmp_path, capsys, image):
    # 30 % of one visit uncovered, as LSST warps mark it: NaN (variance, and image) with NO_DATA
    region = slice(0, 19)
    edit_warp(warps_of(field_copy)[1], data=_nan_columns(region, image=image))
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5", *NO_DETECTED)
    assert code == 0, err
    model, attrs = _model(tmp_path / "m.h5")
    ref, _ = reference
    assert np.all(np.isfinite(model["coadd/variance"])) and np.all(np.isfinite(model["model"]))
    assert attrs["iterations"] >= 2
    # the region keeps its DCR structure (63 % of the full-coverage model's with one visit of four
    # missing there; the old code, whose coadd variance became NaN there: 1.2 %)
    assert _structure(model["model"], region) > 0.4 * _structure(ref["model"], region)


def test_visit_without_any_finite_pixel_is_dropped_with_a_warning(field_copy, tmp_path, capsys):
    dead = warps_of(field_copy)[2]
    edit_warp(dead, data=_nan_columns(slice(None)))
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 0, err
    assert any("visit left out of the model" in line and "1002" in line for line in err), err
    model, attrs = _model(tmp_path / "m.h5")
    assert attrs["iterations"] >= 1 and attrs["stop_reason"] != "zero_metric"
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["visits"]["weight"][2] == 0 and np.all(f["visits"]["weight"][[0, 1, 3]] > 0)
    assert np.all(np.isfinite(model["coadd/variance"]))


def test_all_nan_variance_in_every_visit_but_one_is_refused(field_copy, tmp_path, capsys):
    for w in warps_of(field_copy)[1:]:
        edit_warp(w, data=_nan_columns(slice(None), image=False))
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 2 and err[-1].startswith("mpidcr: error: only 1 of "), err
    assert not (tmp_path / "m.h5").exists()


def test_absurd_pixel_values_are_missing_data(field_copy, tmp_path, capsys):
    # 3e38 is finite in float32 but overflows every sum: treated as missing, like NaN
    def edit(hdul):
        hdul["IMAGE"].data[10:20, 10:20] = 3e38
        hdul["VARIANCE"].data[30:32, :] = np.inf

    edit_warp(warps_of(field_copy)[0], data=edit)
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert code == 0, err
    model, _ = _model(tmp_path / "m.h5")
    for name in ("model", "coadd/image", "coadd/variance"):
        assert np.all(np.isfinite(model[name])), name
    assert np.max(np.abs(model["model"])) < 1e6
