"""The one exception type for mistakes a user can fix."""


class BadInput(Exception):
    """A problem with what the user gave us: the message names the file, what is wrong
    and what to do.  The CLI prints it on one line and exits 2; the UI shows it."""


class Stopped(Exception):
    """A run stopped on request (its folder's STOP file) before its last step; the message
    says whether a checkpoint was saved to resume from."""
