"""The process the job runner starts for a job: it runs the job's command and records how
it ended in the job folder (``exit.json``: exit status and reason).

Any reader (the WebUI that launched the job, a ``bksdm jobs list`` after a restart) then
tells a failed job from an interrupted one without having seen the process end.  The
runner starts this file by its absolute path and it imports only the standard library, so
even a command that cannot start at all (a Python that cannot import ``bksdm_ext``)
leaves a record saying why.  A missing record means this process itself was killed (or
the machine went down): the job was interrupted.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

EXIT_FILE = "exit.json"
LOG_FILE = "log.txt"
LARGEST_RECORD = 64 * 1024  # bytes; the worker writes about a hundred
# Ended by these signals, a run was stopped from outside (the OOM killer, a shutdown, a
# user's kill), not by its own error: it can resume from its last checkpoint.
KILL_SIGNALS = {getattr(signal, name) for name in ("SIGKILL", "SIGTERM", "SIGHUP")
                if hasattr(signal, name)}


def log_tail(folder: Path, lines: int = 40) -> str:
    """The last `lines` lines of the job's log (tqdm's carriage returns as new lines)."""
    log = Path(folder) / LOG_FILE
    if not log.is_file():
        return ""
    with open(str(log), "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 200 * lines))
        text = f.read().decode("utf-8", "replace").replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])


def last_line(text: str) -> str:
    found = [line for line in text.splitlines() if line.strip()]
    return found[-1].strip() if found else ""


def exit_record(code: int, folder: Path) -> Dict[str, Any]:
    """What ``exit.json`` holds for a command that ended with `code` (negative: the signal
    that ended it)."""
    record = {"exit_code": code, "signal": None, "reason": "", "ended": round(time.time(), 3)}
    if code < 0:
        try:
            record["signal"] = signal.Signals(-code).name
        except ValueError:
            record["signal"] = "signal %d" % -code
        record["reason"] = "killed by %s" % record["signal"]
    elif code != 0:
        record["reason"] = last_line(log_tail(folder)) or "exit code %d" % code
    return record


def write_exit(folder: Path, record: Dict[str, Any]) -> None:
    target = Path(folder) / EXIT_FILE
    temporary = target.with_name(EXIT_FILE + ".tmp")
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(str(temporary), str(target))


def read_exit(folder: Path) -> Optional[Dict[str, Any]]:
    """The record of a finished worker, or None (still running, or killed itself).  A
    record this file never writes (a disk's or a hand's damage) is still the end of the
    worker, that says what is wrong with it: exit code None and the damage as reason."""
    path = Path(folder) / EXIT_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > LARGEST_RECORD:
            raise ValueError("%d bytes, more than an exit record holds" % path.stat().st_size)
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        code = record.get("exit_code")
        if type(code) is not int:
            raise ValueError("exit_code must be a whole number, not %s" % shown(code))
        if not isinstance(record.get("reason", ""), str):
            raise ValueError("reason must be text, not %s" % shown(record["reason"]))
    except RecursionError:
        return _damaged("nested too deeply to be an exit record")
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        return _damaged(str(e))
    return record


def _damaged(problem: str) -> Dict[str, Any]:
    return {"exit_code": None, "signal": None,
            "reason": "%s is damaged (%s)" % (EXIT_FILE, problem)}


def shown(value: Any) -> str:
    """A value read from a damaged file, as a message quotes it (briefly)."""
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _end_with_parent() -> None:
    """Linux: the run is killed when its worker dies (a kill of the pid the job list
    holds), so no run goes on unobserved beside the one a resume starts."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(folder: Path, command: List[str]) -> int:
    """Run `command` to its end (a SIGTERM for this process is passed on to it), then
    record how it ended."""
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=(
            _end_with_parent if sys.platform.startswith("linux") else None))
    except OSError as e:  # e.g. the Python it names is gone
        print("cannot start %s: %s" % (command[0], e), flush=True)
        write_exit(folder, exit_record(127, folder))
        return 127

    def pass_on(number: int, frame: Any) -> None:
        child.send_signal(number)

    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), pass_on)
    code = child.wait()
    write_exit(folder, exit_record(code, folder))
    return code


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: worker.py JOB_FOLDER -- COMMAND...", file=sys.stderr)
        return 2
    code = run(Path(argv[0]), argv[2:])
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
