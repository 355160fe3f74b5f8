"""Simulated data with known truth (a room of its own: nothing in a production run imports it).

- :func:`simulate` writes warps, held-out science visits, a manifest and the truth (``mpidcr simulate``);
- :func:`make_field` renders a field in numpy (stars with power-law spectra and real DCR);
- :mod:`mpidcr.sim.galsim_field` renders it with GalSim's chromatic objects (optional extra ``sim``).
"""

from .field import SyntheticField, add_artifacts, make_field
from .simulate import simulate, tan_wcs_header

__all__ = ["SyntheticField", "add_artifacts", "make_field", "simulate", "tan_wcs_header"]
