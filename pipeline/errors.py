"""User mistakes as one line: ``UserError`` and the ``run_main`` wrapper every stage's ``__main__`` goes through.

A ``UserError`` is something the person running the pipeline can fix (a param value, a missing or malformed
input file, a checkpoint that will not load). Its message names the file or param and says what to do;
``run_main`` prints it as one line on stderr (``error: …``) and exits with status 2, without a traceback.
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


def debug() -> bool:
    return os.environ.get("MERC_DEBUG", "") not in ("", "0", "false", "False", "no")


def run_main(main: Callable[[], object], argv_name: str | None = None) -> None:
    """Call a stage's ``main()``; a ``UserError`` becomes one stderr line and exit status 2.

    Use as ``if __name__ == "__main__": run_main(main)``."""
    try:
        main()
    except UserError as e:
        if debug():
            raise
        name = argv_name or os.path.basename(sys.argv[0] or "merc")
        if name == "__main__.py" or name.endswith(".py"):
            name = _module_name()
        print(f"error: {name}: {e} (MERC_DEBUG=1 shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def _module_name() -> str:
    """``pipeline.train`` for ``python -m pipeline.train`` (what the user typed), else the script name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


__all__ = ["EXIT_USER_ERROR", "UserError", "debug", "run_main"]
