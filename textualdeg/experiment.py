"""The experiment folder of a training run: its lock and the record of its starts.

Every training run lives in one folder (``experiments/<name>/`` or ``path.experiments_root``)::

    run.lock           held (an exclusive ``fcntl`` lock) by the main process of the run that
                       uses the folder; it names that process: pid, host, start time
    starts.jsonl       one line per (re)start: start number, time, pid, host, processes, the
                       step it started from, the state it resumed (and which start wrote it),
                       why that state, and its options file
    starts/options_<n>.yml   the resolved options of start n (``options.yml`` is the newest)

A second run on the same folder is refused while the lock is held
(:class:`ExperimentLocked`, naming the holder). The operating system releases the lock
when the holder exits or is killed, so a killed run never leaves the folder locked.

Lineage: resuming from an older state with changed options starts a branch whose states
lie beside the old branch's higher-step ones. Each saved state records the start that
wrote it (``textualdeg.checkpoint.read_state_info``), and :meth:`Experiment.lineage`
follows ``starts.jsonl`` back from a start: its own states, then those of the start it
resumed up to the resumed step, and so on. Auto-resume follows the lineage of the newest
start, so it continues the branch that ran last, not the highest step number.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from textualdeg.checkpoint import read_state_info
from textualdeg.log import get_logger
from textualdeg.options import Options, save_options

logger = get_logger(__name__)

LOCK_NAME = "run.lock"
STARTS_NAME = "starts.jsonl"
STARTS_DIR = "starts"
OPTIONS_NAME = "options.yml"


class ExperimentLocked(RuntimeError):
    """Another run holds the experiment folder's lock; the message names it (pid, host, start time)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_records(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Append JSON lines in one write, fsynced; a line torn by an earlier kill is ended first.

    Args:
        path: the ``.jsonl`` file (created if missing).
        records: JSON-serialisable mappings, one line each.
    """
    data = "".join(json.dumps(dict(record)) + "\n" for record in records).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class ExperimentLock:
    """An exclusive ``fcntl.flock`` on ``<folder>/run.lock``, naming its holder inside the file.

    The lock belongs to the open file, so the operating system releases it when the
    holder closes it, exits or is killed; the holder's details stay in the file until the
    next holder overwrites them. Where ``fcntl`` is missing (Windows) nothing is locked
    and a warning says so.

    Args:
        folder: the experiment folder (created on :meth:`acquire`).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its last holder (``{}`` if unreadable)."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def acquire(self) -> None:
        """Take the lock or raise :class:`ExperimentLocked` naming the holder; idempotent.

        Raises:
            ExperimentLocked: another process holds it.
        """
        if self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:
            logger.warning("no fcntl on this platform: %s is not locked against a second run", self.path.parent)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(fd)
            holder = self.holder()
            who = "a process that has not written its details yet"
            if holder:
                who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
                       f"started {holder.get('started', '?')}")
            raise ExperimentLocked(
                f"{self.path.parent} is in use by another run ({who}); wait for it to finish or stop it, "
                f"or give this run another name / path.experiments_root"
            ) from error
        except OSError as error:  # e.g. a file system without locks
            os.close(fd)
            logger.warning("cannot lock %s (%s): the folder is not locked against a second run", self.path, error)
            return
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self) -> None:
        """Release the lock (closing the file releases it); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Lineage:
    """The states of one branch of a run: ``(start, last step)`` segments.

    A state belongs when the start that wrote it (its marker's ``info["start"]``) is one of
    the segments' and its step is at most that segment's last step. A segment with start
    None stands for states written before starts were recorded.

    Args:
        segments: ``(start number or None, last step)``, newest start first.
    """

    segments: tuple[tuple[int | None, float], ...]

    def __call__(self, step: int, info: Mapping[str, Any]) -> bool:
        start = info.get("start")
        return any(start == owner and step <= last for owner, last in self.segments)

    def __str__(self) -> str:
        shown = self.segments if len(self.segments) <= 4 else self.segments[:3]
        parts = []
        for owner, last in shown:
            who = f"start {owner}" if owner is not None else "states saved before starts were recorded"
            parts.append(who if math.isinf(last) else f"{who} up to step {int(last)}")
        if len(shown) < len(self.segments):
            parts.append(f"{len(self.segments) - len(shown)} earlier starts")
        return ", ".join(parts)


class Experiment:
    """One experiment folder: the lock, ``starts.jsonl`` and the options of every start.

    Only the main process calls the methods that write (:meth:`record_start`) or lock.

    Args:
        root: the experiment folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.lock = ExperimentLock(self.root)

    @property
    def state_root(self) -> Path:
        """The folder of the full training states."""
        return self.root / "state"

    def starts(self) -> list[dict[str, Any]]:
        """The records of ``starts.jsonl``, oldest first (an unreadable line is skipped with a warning)."""
        path = self.root / STARTS_NAME
        if not path.is_file():
            return []
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("start"), int):
                records.append(record)
            elif line.strip():
                logger.warning("%s line %d is not a start record (ignored): %.80s", path, number, line)
        return records

    def lineage(self, start: int | None = None) -> Lineage | None:
        """The lineage of ``start`` (default: the newest start); None when no start is recorded.

        Follows each start back to the start that wrote the state it resumed, capping
        each older start at the step where the branch left it. A start that resumed a
        state outside this folder, or none, ends the chain.
        """
        records = {record["start"]: record for record in self.starts()}
        if not records:
            return None
        current = max(records) if start is None else start
        segments: list[tuple[int | None, float]] = []
        last: float = math.inf
        while True:
            segments.append((current, last))
            record = records.get(current)
            resumed = record.get("resumed") if record else None
            if not isinstance(resumed, dict) or not resumed.get("in_folder"):
                break
            last = min(last, resumed["step"])
            parent = resumed.get("start")
            if parent is None:
                segments.append((None, last))
                break
            if not isinstance(parent, int) or parent >= current:  # a start resumes states of earlier starts only
                break
            current = parent
        return Lineage(tuple(segments))

    def record_start(self, opt: Options, *, step: int, resumed: Path | None, reason: str,
                     num_processes: int = 1) -> dict[str, Any]:
        """Main process: append this start to ``starts.jsonl`` and write its options.

        Writes ``starts/options_<n>.yml`` and ``options.yml`` (the newest options).

        Args:
            opt: the resolved options of this start.
            step: the step it starts from.
            resumed: the state folder it resumed, or None.
            reason: why that state (or none).
            num_processes: processes of the run.

        Returns:
            The record (``start`` is its number, 1 for the first start).
        """
        previous = self.starts()
        number = previous[-1]["start"] + 1 if previous else 1
        options_file = Path(STARTS_DIR) / f"options_{number:04d}.yml"
        save_options(opt, self.root / options_file)
        save_options(opt, self.root / OPTIONS_NAME)
        resumed_record = None
        if resumed is not None:
            in_folder = resumed.resolve().parent == self.state_root.resolve()
            resumed_record = {
                "state": resumed.name if in_folder else str(resumed),
                "step": step,
                "start": read_state_info(resumed).get("start") if in_folder else None,
                "in_folder": in_folder,
            }
        record = {
            "start": number, "time": _now(), "pid": os.getpid(), "host": socket.gethostname(),
            "processes": num_processes, "step": step, "resumed": resumed_record, "reason": reason,
            "options": options_file.as_posix(),
        }
        append_records(self.root / STARTS_NAME, [record])
        return record


__all__ = ["append_records", "Experiment", "ExperimentLock", "ExperimentLocked", "Lineage", "LOCK_NAME", "STARTS_NAME"]
