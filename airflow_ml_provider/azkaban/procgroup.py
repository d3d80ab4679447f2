"""Process groups for migrated Azkaban jobs: start, stop as a whole, and clean up after a killed task.

A job's command runs in its own session (``start_new_session=True``), so it and everything it
starts (``sh -c 'sleep 300 & sleep 300'``) share one process group whose id is the command's pid.
:func:`stop_group` sends the group SIGTERM, waits ``grace`` seconds, then sends SIGKILL to what
is left. Azkaban itself only signals the job's own pid (``AzkabanProcess.softKill`` then
``hardKill``), which leaves the children running; this stops them too.

A task process killed with SIGKILL cannot clean up, so :class:`Watchdog` starts a small separate
process (``python -m airflow_ml_provider.azkaban.procgroup PGID GRACE``, in its own session) that
holds the read end of a pipe whose only write end stays in the task process. When that end closes
(the task finished, or died in any way), the watchdog stops the group. Zombie processes (exited,
not yet reaped) do not count as running. Pure: no Airflow import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["Watchdog", "group_members", "stop_group"]

#: seconds between SIGTERM and SIGKILL when a job's process group is stopped
DEFAULT_GRACE_SECONDS = 10.0


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with Airflow
        return [pgid]
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(
    pgid: int,
    grace: float = DEFAULT_GRACE_SECONDS,
    *,
    reap: Callable[[], object] | None = None,
) -> list[int]:
    """Stop every process of group ``pgid``: SIGTERM, then SIGKILL after ``grace`` seconds.

    :param reap: called while waiting (e.g. ``proc.poll``) so the group leader, when it is our own
        child, does not linger as a zombie.
    :returns: the pids that were running when this was called (empty: nothing to stop).
    """
    running = group_members(pgid)
    if not running:
        return []
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + max(grace, 0.0)
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_members(pgid):
            return running
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    for _ in range(50):
        if reap is not None:
            reap()
        if not group_members(pgid):
            break
        time.sleep(0.1)
    return running


class Watchdog:
    """Stops process group ``pgid`` when this process closes the watchdog or dies (even SIGKILL).

    :param pgid: the job's process group.
    :param grace: seconds between SIGTERM and SIGKILL.
    """

    def __init__(self, pgid: int, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        read_fd, self._write_fd = os.pipe()  # both non-inheritable: no job process holds them
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "airflow_ml_provider.azkaban.procgroup", str(pgid), str(grace)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # survives a kill of the task's own process group
            )
        finally:
            os.close(read_fd)

    def close(self) -> None:
        """Let the watchdog stop what is left of the group and exit; reap it."""
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover - it exits once the group is gone
                pass


def _watch(pgid: int, grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the pipe tells us to act
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop_group(pgid, grace)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]))
