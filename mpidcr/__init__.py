"""mpidcr: DCR (differential chromatic refraction) sky models of sky patches, and DCR-matched
templates for image differencing.

The public Python interface (importable without mpi4py or GalSim):

- :func:`open_model` → :class:`Model`: a model file's planes, coadd, variance, mask, nImage, PSF,
  WCS, visits and history; :meth:`Model.template` → an astropy ``CCDData``;
- :func:`run`: build a model from warp files in-process (optionally on the caller's MPI
  communicator); :func:`solve`: from numpy arrays;
- :class:`DcrConfig` (the LSST task's field names), :class:`Observation`, :class:`Site`,
  :class:`Weather`.

Everything else is internal and may change.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import DcrConfig, Model, Observation, Site, SolveResult, Weather, open_model, run, solve

__all__ = [
    "DcrConfig",
    "Model",
    "Observation",
    "Site",
    "SolveResult",
    "Weather",
    "__version__",
    "open_model",
    "run",
    "solve",
]


def __getattr__(name: str) -> Any:
    """The public names are imported from :mod:`mpidcr.api` on first use: the command line (and
    ``mpidcr --help``) then starts without numpy and the model-file readers."""
    if name in __all__ and name != "__version__":
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mpidcr' has no attribute {name!r}")
