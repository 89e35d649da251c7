"""Stand-in for A1111 1.10.1 ``modules/errors.py``: problems are printed to stderr (A1111 carries on)."""

import sys
import traceback


def report(message: str, *, exc_info: bool = False) -> None:
    """Prints ``message`` (each line marked ``***``), plus the exception being handled if ``exc_info``."""
    lines = ["*** " + line for line in message.splitlines()]
    if exc_info:
        lines += [traceback.format_exc().rstrip(), "---"]
    print("\n".join(lines), file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    """Prints what failed (``task``) and the traceback of ``e``."""
    print("%s: %s" % (task or "error", type(e).__name__), file=sys.stderr)
    print("".join(traceback.format_exception(type(e), e, e.__traceback__)), end="", file=sys.stderr)
