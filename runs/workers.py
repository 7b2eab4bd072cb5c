"""Worker processes and their signals: launch `cli.py worker ID ...` for the page, tell whether a
local PID is alive, stop on SIGINT/SIGTERM, and beat a run's heartbeat while it works.

    process = launch_worker(store, experiment_id)      # runs it in its own session
    with beating(store, experiment_id):                 # heartbeat_at touched every few seconds
        ...
    shown_url(store.url)                                # the URL with its password masked, for messages

A database URL may hold a password: it is shown only through `shown_url`, and a worker gets it
in its environment (`DATABASE_URL`, readable only by its user), never on its command line
(`ps` shows that to everyone). Its log goes to a per-user directory, readable only by the user.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from database import HEARTBEAT_SECONDS, ExperimentStore

REPO_ROOT = Path(__file__).resolve().parents[1]  # the worker's working directory
WORKER_SCRIPT = REPO_ROOT / "cli.py"


def launch_worker(store: ExperimentStore, *experiment_ids: int) -> subprocess.Popen[bytes]:
    """Start one `cli.py worker ID [ID ...]` in its own session (it outlives page reruns).

    The worker runs the experiments in the order given; its PID is recorded on every one
    of them, so a worker that dies leaves none of them `queued` forever. The database URL
    travels in its environment (`worker_environment`), its stderr goes to `worker_log_path`.
    """
    if not experiment_ids:
        raise ValueError("launch_worker needs at least one experiment id")
    log_path = worker_log_path(store.url, experiment_ids)
    # O_NOFOLLOW: the log is never written through a symlink someone planted; 0600 even if it existed.
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        os.fchmod(log.fileno(), 0o600)
        process = subprocess.Popen(
            worker_command(experiment_ids),
            cwd=REPO_ROOT,
            env=worker_environment(store.url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    for experiment_id in experiment_ids:
        store.set_worker(experiment_id, process.pid)
    return process


def worker_command(experiment_ids: tuple[int, ...] | list[int]) -> list[str]:
    """The worker's argv: no database URL (it is in the environment, see `worker_environment`)."""
    return [sys.executable, str(WORKER_SCRIPT), "worker", *map(str, experiment_ids)]


def worker_environment(url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: `base` (default: this process's) with `DATABASE_URL` = `url`, which
    `cli.py worker` reads when `--db` is absent. A process's environment is readable only by its
    own user (and root); its command line is readable by every local user."""
    return {**(os.environ if base is None else base), "DATABASE_URL": url}


def state_directory() -> Path:
    """This user's directory for worker logs, 0700: `$XDG_STATE_HOME/fpl/logs`, else
    `~/.local/state/fpl/logs`; where neither can be made (no home, a read-only one), `fpl-<uid>` in
    the temporary directory. Raises OSError when none is a directory of this user's alone."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path("~/.local/state")).expanduser()
    try:
        return _private_directory(root / "fpl" / "logs")
    except OSError:
        return _private_directory(Path(tempfile.gettempdir()) / f"fpl-{os.getuid()}")


def _private_directory(directory: Path) -> Path:
    """`directory`, created if need be, owned by this user, not a symlink, and made 0700."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    status = os.lstat(directory)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise OSError(f"{directory} is not a directory of this user's: worker logs cannot go there")
    if status.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def worker_log_path(url: str, experiment_ids: tuple[int, ...] | list[int]) -> Path:
    """Where a worker's stderr goes: `state_directory()/worker-<database>-<ids>.log`, <database>
    being the database's name and a digest of its masked URL, so two databases never share a log
    (the password is not part of the name, not even hashed)."""
    suffix = f"{experiment_ids[0]}" if len(experiment_ids) == 1 else f"{experiment_ids[0]}-{experiment_ids[-1]}"
    shown = shown_url(url)
    try:
        name = Path(make_url(url).database or "").stem
    except (ArgumentError, ValueError):
        name = ""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "db"
    digest = hashlib.sha256(shown.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return state_directory() / f"worker-{name}-{digest}-{suffix}.log"


_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_USERINFO_PASSWORD = re.compile(r"(?<=://)([^/@:]*):[^/@]*@")  # scheme://user:password@host


def shown_url(url: str) -> str:
    """A database URL as it may be shown (printed, logged, stored): its password, and any query
    parameter that looks like one (`?password=`, `sslpassword`, `token`), replaced by `***`;
    control characters escaped. Never raises: a URL SQLAlchemy cannot parse is masked by pattern."""
    try:
        parsed = make_url(url)
        secret = {key: "***" for key in parsed.query if _SECRET_QUERY_KEY.search(key)}
        if parsed.password is None and not secret:
            return printable(url)  # nothing to hide: as given (rendering would re-escape it)
        shown = parsed.update_query_dict(secret).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except (ArgumentError, ValueError, TypeError, AttributeError):
        shown = _USERINFO_PASSWORD.sub(r"\1:***@", str(url))
        shown = re.sub(r"(?i)((?:pass|pwd|secret|token)[^=&;]*=)[^&;]*", r"\1***", shown)
    return printable(shown)


_UNPRINTABLE = frozenset(("Cc", "Cs", "Zl", "Zp"))  # controls, lone surrogates, line/paragraph separators
_BIDI_CONTROLS = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])  # text shown reordered


def printable(text: str) -> str:
    """`text` with control characters (NUL, ESC, newlines, ...), line separators, lone surrogates and
    bidirectional overrides escaped (`\\x1b`, `\\n`, `\\u202e`): one line that a terminal shows as
    it is and a database stores (PostgreSQL refuses NUL). Other text (accents, emoji, NBSP) is kept."""
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _UNPRINTABLE or ord(char) in _BIDI_CONTROLS
        else char
        for char in text
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class StopSignals:
    """SIGINT/SIGTERM for a process that runs one or more experiments in turn.

    The first signal stops the current run after its round and keeps later runs from
    starting (`received`); a second one aborts at once. A stop asked for through the
    database ends only its own run: each run gets its own event from `new_run`. `handle=False`:
    install no handlers (a process whose signals belong to someone else: Flower's ServerApp).
    """

    def __init__(self, *, handle: bool = True) -> None:
        self.received = threading.Event()
        self.current = threading.Event()
        if handle and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def new_run(self) -> threading.Event:
        self.current = threading.Event()
        if self.received.is_set():
            self.current.set()
        return self.current

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.received.is_set():
            raise KeyboardInterrupt
        self.received.set()
        self.current.set()
        print("stopping: the running round is given up (under local DP it ends first); interrupt again to abort",
              file=sys.stderr)


@contextmanager
def ticking(name: str, interval: float, tick: Callable[[], None]) -> Iterator[None]:
    """Call `tick()` every `interval` seconds from a daemon thread while the block runs; the
    thread is joined when the block ends."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(interval):
            tick()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def beating(store: ExperimentStore, experiment_id: int, interval: float = HEARTBEAT_SECONDS) -> Any:
    """Touch the run's heartbeat every `interval` seconds from a thread while the block runs
    (rounds can take minutes; readers call a run dead after `database.STALE_HEARTBEAT_SECONDS`
    of silence)."""

    def beat() -> None:
        try:
            store.heartbeat(experiment_id)
        except Exception as error:  # a busy or unreachable database: the next beat tries again
            print(f"warning: heartbeat of experiment {experiment_id} failed: {error}", file=sys.stderr)

    return ticking(f"heartbeat-{experiment_id}", interval, beat)


PROGRESS_SECONDS = 2.0  # how often a running round's progress is stored, and a stop looked for


def following(
    store: ExperimentStore, experiment_id: int, run: Any, stop_event: threading.Event,
    interval: float = PROGRESS_SECONDS,
) -> Any:  # fmt: skip
    """While the block runs the rounds, every `interval` seconds from a thread: store where the
    running round stands (`run.progress()`, when it changed) and, once a stop is asked for (a
    signal set `stop_event`, or the page asked through the database), give up the running
    round (`run.abandon_round()`) instead of waiting for its end. Progress is best effort:
    a failed write is retried at the next tick, never fails the run."""
    shown: list[dict[str, Any] | None] = [None]

    def follow() -> None:
        try:
            if not stop_event.is_set() and store.stop_requested(experiment_id):
                stop_event.set()
            if stop_event.is_set():
                run.abandon_round()
            if (progress := run.progress()) is not None and progress != shown[0]:
                store.set_progress(experiment_id, progress)
                shown[0] = progress
        except Exception as error:  # a busy or unreachable database: the next tick tries again
            print(f"warning: progress of experiment {experiment_id} not stored: {error}", file=sys.stderr)

    return ticking(f"progress-{experiment_id}", interval, follow)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of this checkout (asked once per process), or `unknown`."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
