"""The configuration: seed fields and defaults, loaders, and one-line errors."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from seed_parser import parse_seed

from mpidcr import config as C
from mpidcr.cli import main
from mpidcr.errors import ConfigError
from mpidcr.io.configfile import load_config

ROOT = Path(__file__).resolve().parent.parent


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def test_seed_fields_and_defaults_match():
    seed_fields, seed_subtasks = parse_seed()
    assert len(seed_fields) == 68 and len(seed_subtasks) == 14
    assert set(C.FIELD_BY_NAME) == set(seed_fields)
    assert set(C.SUBTASK_BY_NAME) == set(seed_subtasks)
    cfg = C.DcrConfig()
    for name, default in seed_fields.items():
        if default == "<ConfigField>":  # nested LSST configs: accepted as tables
            assert getattr(cfg, name) == {}
            continue
        assert _norm(getattr(cfg, name)) == _norm(default), name


def test_defaults_listing_has_every_field(capsys):
    import ast
    import re

    assert main(["config", "--defaults"]) == 0
    out = capsys.readouterr().out
    seed_fields, seed_subtasks = parse_seed()
    rows = {}
    for line in out.splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        rows[cols[0]] = cols
    for name, default in seed_fields.items():
        assert name in rows, name
        if default != "<ConfigField>":
            assert _norm(ast.literal_eval(rows[name][2])) == _norm(default), name
    for sub in seed_subtasks:
        assert f"[{sub}]" in rows


def test_defaults_listing_values_parse_back():
    seed_fields, _ = parse_seed()
    import ast

    for f in C.FIELDS:
        shown = C._fmt(f.default)
        if seed_fields[f.name] == "<ConfigField>":
            continue
        assert _norm(ast.literal_eval(shown)) == _norm(seed_fields[f.name]), f.name


def test_snake_case_aliases():
    cfg = C.DcrConfig(dcr_num_subfilters=4, effective_wavelength=620.0)
    assert cfg.dcrNumSubfilters == 4 and cfg.effectiveWavelength == 620.0
    assert cfg.max_iterations == 12 and cfg.min_iterations == 4
    assert cfg.base_gain == pytest.approx(1 / 3)
    cfg.detect.threshold_sigma = 4
    assert cfg.detect.thresholdSigma == 4.0


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"dcrNumSubfilterz": 3}, r"unknown configuration field 'dcrNumSubfilterz' \(did you mean dcrNumSubfilters"),
        ({"dcrNumSubfilters": 1}, r"'dcrNumSubfilters' = 1 is out of range; expected a value in \[2, 32\]"),
        ({"dcrNumSubfilters": "three"}, r"'dcrNumSubfilters' = 'three': expected an integer"),
        ({"dcrNumSubfilters": 2.5}, r"expected an integer"),
        (
            {"maxFractionEpochsLow": 1.0},
            r"'maxFractionEpochsLow' = 1.0 is out of range; expected a value in \[0.0, 1.0\)",
        ),
        ({"spatialThreshold": 1.5}, r"'spatialThreshold' = 1.5 is out of range; expected a value in \[0.0, 1.0\]"),
        ({"imageInterpOrder": 6}, r"'imageInterpOrder' = 6 is out of range; expected a value in \[1, 5\]"),
        ({"subregionSize": [100]}, r"'subregionSize' = \[100\]: expected a list of 2 integers"),
        ({"statistic": "MODE"}, r"'statistic' = 'MODE' is out of range; expected one of 'MEAN', 'MEDIAN', 'MEANCLIP'"),
        ({"useConvergence": "yes"}, r"'useConvergence' = 'yes': expected a boolean"),
        ({"badMaskPlanes": [1, 2]}, r"'badMaskPlanes' = \[1, 2\]: expected a list of strings"),
        ({"detect": {"thresholdSigma": -1}}, r"'detect.thresholdSigma' = -1 is out of range"),
        ({"detect": {"sigma": 3}}, r"unknown configuration field 'detect.sigma'"),
        ({"dcrNumSubfilters": None}, r"'dcrNumSubfilters' may not be None"),
        ({"maskPropagationThresholds": {"SAT": 2.0}}, r"expected fractions in \[0, 1\]"),
    ],
)
def test_errors_are_one_line_and_name_the_field(values, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        C.DcrConfig(**values)
    assert "\n" not in str(info.value)


def test_required_band_and_range():
    with pytest.raises(ConfigError, match="'effectiveWavelength' is required"):
        C.DcrConfig().validate()
    with pytest.raises(ConfigError, match="outside the refraction model"):
        C.DcrConfig(effectiveWavelength=300.0, bandwidth=200.0).validate()
    with pytest.raises(ConfigError, match="'minNumIter' = 7 exceeds 'maxNumIter' = 5"):
        C.DcrConfig(effectiveWavelength=500.0, bandwidth=100.0, minNumIter=7, maxNumIter=5).validate()
    with pytest.raises(ConfigError, match="implements 1 and 3"):
        C.DcrConfig(effectiveWavelength=500.0, bandwidth=100.0, imageInterpOrder=2).validate()


def test_lsst_only_field_is_accepted_with_a_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        cfg = load_config(overrides=["doWrite=false", "coaddName=goodSeeing"])
    assert cfg.doWrite is False
    msgs = [r.getMessage() for r in caplog.records]
    assert any("'doWrite' only has a meaning inside the LSST middleware; ignored" in m for m in msgs)
    assert any("'coaddName'" in m for m in msgs)


def test_planned_field_notice(caplog):
    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        load_config(overrides={"doFilterMorphological": True})
    assert any("not implemented in this version" in r.getMessage() for r in caplog.records)


def test_loaders_toml_yaml_lsst(tmp_path):
    (tmp_path / "a.toml").write_text(
        "dcrNumSubfilters = 4\nbad_mask_planes = ['NO_DATA', 'SAT']\n[detect]\nthresholdSigma = 4.5\n"
    )
    (tmp_path / "b.yaml").write_text("dcrNumSubfilters: 5\nuseConvergence: false\n")
    (tmp_path / "c.py").write_text(
        "# LSST override file\nconfig.dcrNumSubfilters = 2\nconfig.maskPropagationThresholds = {'SAT': 0.2}\n"
    )
    a = load_config(tmp_path / "a.toml")
    assert a.dcrNumSubfilters == 4 and a.badMaskPlanes == ("NO_DATA", "SAT") and a.detect.thresholdSigma == 4.5
    b = load_config(tmp_path / "b.yaml", ["dcrNumSubfilters=6"])
    assert b.dcrNumSubfilters == 6 and b.useConvergence is False
    c = load_config(tmp_path / "c.py")
    assert c.dcrNumSubfilters == 2 and c.maskPropagationThresholds == {"SAT": 0.2}


def test_yaml_is_loaded_safely(tmp_path):
    (tmp_path / "evil.yaml").write_text("dcrNumSubfilters: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: cannot parse"):
        load_config(tmp_path / "evil.yaml")


def test_lsst_file_is_not_executed(tmp_path):
    (tmp_path / "x.py").write_text("import os\nos.system('echo pwned')\n")
    with pytest.raises(ConfigError, match=r"only 'config\.<field> = <literal>' lines"):
        load_config(tmp_path / "x.py")


def test_override_syntax():
    with pytest.raises(ConfigError, match="not of the form name=value"):
        C.parse_overrides(["dcrNumSubfilters"])
    assert C.parse_overrides(["a=1", "b=[1, 2]", "c=none", "d=MEAN", "e=true"]) == {
        "a": 1,
        "b": [1, 2],
        "c": None,
        "d": "MEAN",
        "e": True,
    }


def test_roundtrip_and_digest():
    cfg = C.DcrConfig(dcrNumSubfilters=4, detect={"growRadius": 3})
    again = C.DcrConfig.from_dict(cfg.as_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert C.DcrConfig().digest() != cfg.digest()


def test_cli_reports_config_error_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "mpidcr", "config", "--set", "spatialThreshold=2"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mpidcr: error: configuration field 'spatialThreshold' = 2 is out of range; expected a value in [0.0, 1.0]"
    ]


def test_docs_config_table_is_current():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert C.defaults_table(markdown=True) in doc, "docs/config.md is stale: run `make docs`"
