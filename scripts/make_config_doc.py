"""Regenerate docs/config.md from mpidcr.config (run by `make docs`)."""

from pathlib import Path

from mpidcr.config import defaults_table

HEADER = """# Configuration reference

Generated from `mpidcr/config.py` by `make docs`; do not edit the table by hand.

Every field of Rubin's `DcrAssembleCoaddTask` keeps its name and default, so an
LSST configuration can be pasted as it is; snake_case spellings
(`dcr_num_subfilters`) are accepted too.  Values come from, later ones winning:
the defaults, a configuration file (`--config FILE`: TOML, YAML read with safe
loading, or an LSST override file of `config.name = value` lines, which is
parsed, never executed), the `[config]` table of a manifest, and `--set
name=value` overrides (`--set detect.thresholdSigma=4` for a subtask section).

Status column:

- **used**: changes what mpidcr computes;
- **lsst-only**: only means something inside the LSST middleware (butler,
  Gen2 calibration names, metadata persistence); accepted and ignored, with a
  notice when set away from its default;
- **planned**: accepted and checked, but its feature (artifact rejection, PSF
  measurement, ...) is not in this version; a warning says so when it is set.

Every error is one line naming the field and what is allowed, e.g.

    mpidcr: error: configuration field 'spatialThreshold' = 2 is out of range; expected a value in [0.0, 1.0]

Derived defaults: `minNumIter` None means K, `maxNumIter` None means 3K,
`baseGain` None means 1/(K−1), with K = `dcrNumSubfilters`.  mpidcr runs
exactly `maxNumIter` iterations at most (the LSST task runs one more).

"""

out = Path(__file__).resolve().parent.parent / "docs" / "config.md"
out.write_text(HEADER + defaults_table(markdown=True))
print(f"wrote {out}")
