"""Exceptions of mpidcr.

Which to raise:

- :class:`ConfigError` — a configuration field is unknown, has the wrong type or
  is out of range (message names the field and the allowed values);
- :class:`InputError` — an input file or its metadata is unusable (message names
  the file and the field);
- :class:`DecompositionError` — the patch cannot be split over the ranks as asked;
- :class:`PhysicsError` — a physical quantity is outside the model's validity
  (e.g. a wavelength outside the refraction formula's range);
- :class:`SolverError` — the iteration was asked something inconsistent.

All derive from :class:`MpidcrError`, which the CLI turns into a one-line
message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class MpidcrError(Exception):
    """Base class: an error whose message is fit to show a user as one line.

    Line breaks that reach a message (from a file name or a value in an input) are shown as
    spaces, so the message stays one line.
    """

    def __str__(self) -> str:
        return super().__str__().replace("\r", " ").replace("\n", " ")


class ConfigError(MpidcrError, ValueError):
    """A configuration field is unknown, mistyped or out of range."""


class InputError(MpidcrError, OSError):
    """An input file or its metadata cannot be used."""


class DecompositionError(MpidcrError, ValueError):
    """The patch cannot be decomposed over the ranks as requested."""


class PhysicsError(MpidcrError, ValueError):
    """A physical input is outside the validity range of the model."""


class SolverError(MpidcrError, RuntimeError):
    """The forward-model iteration was given inconsistent state."""


class Preempted(MpidcrError):
    """The run stopped on SIGTERM after writing a checkpoint; exit code 75 (EX_TEMPFAIL)."""

    exit_code = 75
    collective = True
