"""Errors that stop a features stage. Bad *rows* never raise (they go to quarantine); these are for
problems that make a whole table unusable: a missing required column, an unreadable file.

The CLI turns `BuildError` into a message on stderr and exit code 2.
"""

from __future__ import annotations


class BuildError(Exception):
    """A table cannot be used at all. The message names the file (and the column, when one is
    missing) so a user can fix the input without reading code."""
