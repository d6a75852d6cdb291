"""User mistakes as one line: ``UserError`` and the ``run_main`` wrapper every stage's ``__main__`` goes through.

A ``UserError`` is something the person running the pipeline can fix (a param value, a missing or malformed
input file, a checkpoint that will not load). Its message names the file or param and says what to do;
``run_main`` logs it as one line on stderr and exits with status 2, without a traceback.
``MERC_DEBUG=1`` re-raises it so the traceback shows. Anything else (a bug) still raises with its traceback.

``UserError`` is a ``ValueError`` so callers (and tests) that catch ``ValueError`` keep working.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

log = logging.getLogger("merc")

EXIT_USER_ERROR = 2  # as argparse exits on a bad command line: "you asked for something that cannot be done"


class UserError(ValueError):
    """A mistake the user can fix; the message is the whole story: what is wrong, where, and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the caller's formatting


class MissingFileError(UserError, FileNotFoundError):
    """An input file (checkpoint, teacher, feature table) that is not there: the message says which stage makes it."""


class MissingParamError(UserError, KeyError):
    """A params.yaml section a stage reads is not there (a ``KeyError`` too, for callers that test for one)."""

    __str__ = ValueError.__str__  # KeyError's would quote the message


class NonFiniteError(UserError):
    """Training produced a NaN/inf loss or gradient (diverging lr, bad features): stopped instead of going on."""


def debug() -> bool:
    return os.environ.get("MERC_DEBUG", "") not in ("", "0", "false", "False", "no")


def run_main(main: Callable[[], object]) -> None:
    """Call a stage's ``main()``; a ``UserError`` becomes one logged line (stderr) and exit status 2.

    Use as ``if __name__ == "__main__": run_main(main)``."""
    try:
        main()
    except UserError as e:
        if debug():
            raise
        log.error("%s: %s (MERC_DEBUG=1 shows the traceback)", _program(), e)
        sys.exit(EXIT_USER_ERROR)


def _program() -> str:
    """``pipeline.train`` for ``python -m pipeline.train`` (what the user typed), else the script's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0] or "merc")


__all__ = ["EXIT_USER_ERROR", "MissingFileError", "MissingParamError", "NonFiniteError", "UserError", "debug",
           "run_main"]
