"""The batch job's three ways to fail, each with its own exit code (see service/batch/cli.py)."""

from __future__ import annotations


class InputError(ValueError):
    """A problem with the job's input or options (exit code 2): the message says what and where."""


class RowFailure(Exception):
    """A bad row under `--on-error fail` (exit code 1); the message names the row."""


class JobError(RuntimeError):
    """The job could not finish for a reason other than its input, e.g. a Ray cluster failure (exit code 3)."""
