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
        assert _norm(C.FIELD_BY_NAME[name].seed_default) == _norm(default), name


#: what LSST's setDefaults chain (AssembleCoadd → CompareWarp → DcrAssembleCoadd) makes of the
#: seed's raw defaults: the task's effective defaults
LSST_EFFECTIVE = {
    "badMaskPlanes": ["NO_DATA", "BAD", "SAT"],
    "doNImage": True,
    "statistic": "MEAN",
    "removeMaskPlanes": ["NOT_DEBLENDED", "EDGE"],
}


#: mpidcr's own measured choices against the seed (each field's doc says why, with the numbers)
MPIDCR_CHOICES = {"doPreserveContainedBySource": False, "doFilterMorphological": True}


def test_defaults_are_the_tasks_effective_ones():
    """The defaults are what the task runs with; exactly those fields, and mpidcr's measured
    choices (their docs give the measurement), differ from the seed listing."""
    cfg = C.DcrConfig()
    for name, value in {**LSST_EFFECTIVE, **MPIDCR_CHOICES}.items():
        assert _norm(getattr(cfg, name)) == _norm(value), name
    differing = {f.name for f in C.FIELDS if _norm(f.default) != _norm(f.seed_default)}
    assert differing == set(LSST_EFFECTIVE) | set(MPIDCR_CHOICES)
    for name in MPIDCR_CHOICES:
        assert "mpidcr:" in C.FIELD_BY_NAME[name].doc and "%" in C.FIELD_BY_NAME[name].doc


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
    assert rows["field"][:5] == ["field", "type", "default", "seed default", "acts"]
    cfg = C.DcrConfig()
    for name, default in seed_fields.items():
        assert name in rows, name
        if default == "<ConfigField>":
            continue
        # the effective default, then the seed's raw one where it differs
        assert _norm(ast.literal_eval(rows[name][2])) == _norm(getattr(cfg, name)), name
        seed_cell = rows[name][3]
        assert _norm(default) == _norm(getattr(cfg, name) if seed_cell == "=" else ast.literal_eval(seed_cell)), name
        status = C.FIELD_BY_NAME[name].status
        assert rows[name][4].startswith("yes" if status == "used" else "no" if status == "lsst-only" else "not yet")
    for sub in seed_subtasks:
        assert f"[{sub}]" in rows
    for name in ("profile", "lsstCompat.subregions", "lsstCompat.refraction"):
        assert rows[name][3] == "n/a" and rows[name][4] == "yes"


def test_defaults_listing_values_parse_back():
    seed_fields, _ = parse_seed()
    import ast

    for f in C.FIELDS:
        if seed_fields[f.name] == "<ConfigField>":
            continue
        assert _norm(ast.literal_eval(C._fmt(f.seed_default))) == _norm(seed_fields[f.name]), f.name
        assert _norm(ast.literal_eval(C._fmt(f.default))) == _norm(f.default), f.name


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


def test_every_seed_field_acts(capsys):
    """No field or subtask field of the seed is merely accepted: each acts or is LSST-middleware only."""
    assert {f.status for f in C.FIELDS} <= {"used", "lsst-only"}
    for sub in C.SUBTASKS:
        assert sub.status in ("used", "lsst-only") and all(f.status == "used" for f in sub.fields), sub.name
    assert main(["config", "--defaults"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows and not any(row[:1] and "not yet" in " ".join(row[:8]) for row in rows)


def test_subregion_size_without_subregions_is_named(caplog):
    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        load_config(overrides=["subregionSize=[500, 500]"])
    assert any("'subregionSize' acts only with lsstCompat.subregions" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        load_config(overrides=["subregionSize=[500, 500]", "profile=lsst"])
    assert not any("subregionSize" in r.getMessage() for r in caplog.records)


def test_lsst_behaviours_follow_the_profile_unless_set():
    cfg = C.DcrConfig()
    assert not any(cfg.lsst(b) for b in C.LSST_BEHAVIOURS)
    cfg = C.DcrConfig(profile="lsst")
    assert all(cfg.lsst(b) for b in C.LSST_BEHAVIOURS)
    cfg = C.DcrConfig(profile="lsst", lsstCompat={"subregions": False})
    assert not cfg.lsst("subregions") and cfg.lsst("iterationControl")
    cfg = C.DcrConfig(**{"lsstCompat.refraction": True})
    assert cfg.lsst("refraction") and not cfg.lsst("subregions")
    assert cfg.shift_options()["formula"] == "afw"
    with pytest.raises(C.ConfigError, match="unknown LSST behaviour"):
        cfg.lsst("nonsense")


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


def test_lsst_file_is_not_executed(tmp_path, caplog):
    marker = tmp_path / "ran"
    (tmp_path / "x.py").write_text(f"import os\nopen({str(marker)!r}, 'w').write('x')\nconfig.dcrNumSubfilters = 4\n")
    with caplog.at_level(logging.WARNING, logger="mpidcr"):
        cfg = load_config(tmp_path / "x.py")
    assert not marker.exists() and cfg.dcrNumSubfilters == 4
    assert any(f"{tmp_path / 'x.py'}:2:" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


LSST_OVERRIDES = """\
# An override file as LSST users have them (obs package style)
from lsst.pipe.tasks.assembleCoadd import CompareWarpAssembleCoaddTask
from lsst.meas.algorithms import SourceDetectionTask

config.assembleStaticSkyModel.retarget(CompareWarpAssembleCoaddTask)
config.dcrNumSubfilters = 4  # four sub-filters
config.badMaskPlanes = [
    "NO_DATA",   # no pixels
    "BAD",
    "SAT",  # saturated, '#' inside a comment
    "EDGE",
]
config.badMaskPlanes.append("SUSPECT")
config.removeMaskPlanes += ["CROSSTALK"]
config.detect.thresholdValue = 4.5
config.detectTemplate.thresholdValue = 6.0
config.detectTemplate.nSigmaToGrow = 3.0
config.maskPropagationThresholds["SAT"] = 0.2
config.connections.coaddName = "goodSeeing"
config.effectiveWavelength = 476.31
config.bandwidth = 147.0 * 1
"""


def test_lsst_override_file_as_users_have_it(tmp_path, caplog):
    path = tmp_path / "dcrAssembleCoadd.py"
    path.write_text(LSST_OVERRIDES)
    with caplog.at_level(logging.INFO, logger="mpidcr"):
        cfg = load_config(path)
    assert cfg.dcrNumSubfilters == 4
    assert cfg.badMaskPlanes == ("NO_DATA", "BAD", "SAT", "EDGE", "SUSPECT")
    assert cfg.removeMaskPlanes == ("NOT_DEBLENDED", "EDGE", "CROSSTALK")
    assert cfg.detect.thresholdSigma == 4.5 and cfg.detectTemplate.thresholdSigma == 6.0
    assert cfg.maskPropagationThresholds["SAT"] == 0.2
    assert cfg.connections == {"coaddName": "goodSeeing"}
    assert cfg.effectiveWavelength == 476.31 and cfg.bandwidth is None  # 147.0 * 1 is not a literal
    messages = {r.getMessage() for r in caplog.records}

    def said(line, text):
        return any(m.startswith(f"{path}:{line}:") and text in m for m in messages)

    assert said(5, "retarget") and said(21, "not a literal")
    assert cfg.detectTemplate.nSigmaToGrow == 3.0
    assert any("detectTemplate.thresholdValue read as detectTemplate.thresholdSigma" in m for m in messages)


def test_lsst_override_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("config.dcrNumSubfilters = 3\nconfig.dcrNumSubfilterz = 4\n")
    with pytest.raises(ConfigError, match=r"bad.py:2: unknown configuration field 'dcrNumSubfilterz'"):
        load_config(bad)
    bad.write_text("config.dcrNumSubfilters = (\n")
    with pytest.raises(ConfigError, match=r"bad.py:1: not Python syntax"):
        load_config(bad)
    bad.write_text("config.detect.thresholdType = 'value'\nconfig.detect.thresholdValue = 100.0\n")
    assert load_config(bad).detect.thresholdSigma == 7.5  # not sigma: not mapped (the default stays)


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
    cfg = C.DcrConfig(dcrNumSubfilters=4, detect={"nSigmaToGrow": 3.0})
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


def test_max_iterations_default_depends_on_the_model():
    cfg = C.DcrConfig(dcrNumSubfilters=3)
    assert cfg.max_iterations == cfg.max_iterations_for(psf_aware=False) == 9
    assert cfg.max_iterations_for(psf_aware=True) == C.PSF_AWARE_ITERATIONS == 45
    assert C.DcrConfig(dcrNumSubfilters=16).max_iterations_for(psf_aware=True) == 48
    assert C.DcrConfig(maxNumIter=7).max_iterations_for(psf_aware=True) == 7
    assert C.DcrConfig().usePsf is None  # automatic: the PSF-aware model wherever every visit has a PSF
