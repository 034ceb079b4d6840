"""Errors of a whole run, importable without Ray (the command line maps them to exit codes)."""


class RunError(Exception):
    """A run-level problem (no inputs, unwritable output, a pool that cannot start): the message says what
    to do. Per-input problems are never RunErrors; they are manifest rows."""
