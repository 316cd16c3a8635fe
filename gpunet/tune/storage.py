"""Optuna storages for a study: a journal file, a relational database, Redis.

- **Journal file** (a path): checked before Optuna reads it. Every line must be one JSON
  record of Optuna's journal (an object with an integer ``op_code`` and a ``worker_id``) that
  replays; the first bad line is reported as ``study journal FILE is damaged at line N: ...``
  (line 1: ``FILE is not an Optuna study journal``) and nothing is changed. The one fault a
  crash can leave, a *torn record* (a write cut short: a final line without its newline, or
  such a piece with the next record appended to it by another worker), is repaired under
  Optuna's journal lock by dropping the piece, with a warning naming the file and line;
  every complete record, so every finished trial, is kept. Lines are read ``MAX_LINE`` bytes
  at most, so a huge file that is not a journal costs bounded memory.
- **Relational databases** (``postgresql://``, ``mysql://``, ``sqlite:///``): an ``RDBStorage``
  with Optuna's heartbeat (``heartbeat`` seconds between beats, a RUNNING trial without one
  for ``stale_after`` seconds is failed by the next worker; the database server's clock is the
  only clock, so this works across hosts). Creating Optuna's tables is serialized with a
  PostgreSQL advisory lock (workers started together on an empty database all succeed;
  elsewhere a failed creation is retried). A lost connection is retried for ``retry_for``
  seconds (back-off 0.5 s doubling to 5 s), then ``StorageError`` says so in one line naming
  the host and database. The password never appears in a message (``redact``).
- **Redis** (``redis://``, ``rediss://``): refused with one line. Optuna's Redis journal
  backend keeps snapshots of the study that ``JournalStorage`` reads back through Python's
  unpickler (Optuna 4 and 5), so whoever can write to the Redis server could run code
  in every worker; gpunet loads no pickle anywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GpunetError

#: the longest journal line read (a record holds a trial's attributes: far below this)
MAX_LINE = 16 * 1024 * 1024
#: how Optuna starts every journal record (``{"op_code": N, "worker_id": ...}``)
RECORD_START = b'{"op_code":'
#: seconds a journal lock may stand still before it counts as left by a killed worker (a
#: live worker holds it for one append)
LOCK_GRACE = 10
#: PostgreSQL advisory lock key held while Optuna creates its tables ("gpunet" in ASCII)
SCHEMA_LOCK_KEY = 0x6770756E6574
#: seconds between retries of a lost database connection: 0.5 doubling up to this
MAX_BACKOFF = 5.0


class StorageError(GpunetError):
    """The study's storage cannot be read or reached (one line; never a password)."""


def require_optuna() -> Any:
    """The ``optuna`` module, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("gpunet tune needs optuna: pip install 'gpunet[tune]'") from None
    return optuna


# ====================================================================== URLs
def is_url(storage: str | Path) -> bool:
    return "://" in str(storage)


def is_shared_db(storage: str | Path) -> bool:
    """Whether ``storage`` is a relational database (Optuna's heartbeat marks stale trials)."""
    s = str(storage)
    return is_url(s) and not s.startswith(("redis://", "rediss://"))


def redact(storage: str | Path) -> str:
    """``storage`` fit to show: a URL's password (in the authority or a ``password=`` query
    parameter) replaced by ``***``."""
    s = str(storage)
    if not is_url(s):
        return s
    scheme, rest = s.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" in authority:
        cred, host = authority.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        authority = f"{cred}@{host}"
    if "?" in tail:
        path, query = tail.split("?", 1)
        query = "&".join(f"{k}=***" if k.lower() == "password" else f"{k}{eq}{v}"
                         for k, eq, v in (q.partition("=") for q in query.split("&")))
        tail = f"{path}?{query}"
    return f"{scheme}://{authority}{sep}{tail}"


def _password(storage: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(storage).password
    except Exception:  # noqa: BLE001 - any unparsable URL has no password we can find
        return None
    return str(pw) if pw else None


def target(storage: str) -> str:
    """``database 'D' on host 'H'`` for a database URL (a Unix socket folder as the host)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(storage)
    except Exception:  # noqa: BLE001
        return redact(storage)
    if u.get_backend_name() == "sqlite":
        return f"SQLite database {u.database!r}"
    host = u.host or u.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = f", port {u.port}" if u.port else ""
    return f"database {u.database!r} on host {host!r}{port}"


def _reason(e: BaseException, secret: str | None) -> str:
    """The first line of the driver's own message (SQLAlchemy's wrapper and SQL left out),
    with ``secret`` blanked."""
    inner = getattr(e, "orig", None) or e.__cause__ or e
    inner = getattr(inner, "orig", None) or inner
    text = str(inner).strip() or type(inner).__name__
    line = next((x.strip() for x in text.splitlines() if x.strip()), type(inner).__name__)
    if secret:
        line = line.replace(secret, "***")
    return line


# ====================================================================== make_storage
def make_storage(url: str | Path, *, heartbeat: float | None = None,
                 stale_after: float | None = None, retry_for: float = 30.0,
                 say: Callable[[str, dict[str, Any]], None] | None = None) -> Any:
    """An Optuna storage: a checked journal file for a path (created with its folder), a
    one-line ``ConfigError`` for ``redis://`` (see the module), a retrying ``RDBStorage`` for
    any other URL
    (``heartbeat`` / ``stale_after`` seconds: Optuna's heartbeat interval and grace period,
    rounded up to whole seconds). ``say("journal-repaired", info)`` hears a repair."""
    optuna = require_optuna()
    s = str(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        refuse_redis(s)
        if is_url(s):
            return _rdb_storage(optuna, s, heartbeat, stale_after, retry_for)
        return optuna.storages.JournalStorage(
            _journal_file(optuna, Path(s).expanduser(), say))


def refuse_redis(storage: str | Path) -> None:
    """One-line ``ConfigError`` for a ``redis://`` / ``rediss://`` storage (see the module)."""
    s = str(storage)
    if not s.lower().startswith(("redis://", "rediss://")):
        return
    raise ConfigError(f"storage {redact(s)}: Redis storage is refused because Optuna's Redis "
                      "journal unpickles the snapshots it reads from Redis, and gpunet loads "
                      "no pickle; use a journal file or a postgresql:// URL")


# ====================================================================== journal files
def _journal_file(optuna: Any, p: Path, say: Callable[[str, dict[str, Any]], None] | None
                  ) -> Any:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder of storage {p}: "
                          f"{e.strerror or type(e).__name__}") from None
    if p.is_dir():
        raise ConfigError(f"storage {p} is a folder; give a journal file path")
    if p.exists() and not p.is_file():
        raise ConfigError(f"storage {p} is not a regular file; give a journal file path")
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # pragma: no cover - optuna < 4
        from optuna.storages import JournalFileStorage as JournalFileBackend
    if p.exists():
        check_journal(optuna, p, say)
    return JournalFileBackend(str(p), lock_obj=journal_lock(optuna, p))


def journal_lock(optuna: Any, p: Path) -> Any:
    """The lock on journal ``p``: Optuna's symlink protocol by absolute path, a lock left
    unchanged for ``LOCK_GRACE`` seconds (a writer killed mid-append) removed with a warning,
    even one that dangles (``gpunet.tune.lock``)."""
    from .lock import JournalLock

    return JournalLock(p, LOCK_GRACE)


def release_dead_lock(p: Path, still: float = 2.0) -> bool:
    """Remove journal ``p``'s lock if it stands unchanged for ``still`` seconds (a live worker
    holds it for one append; the caller knows a worker was just killed, maybe holding it).
    True if it was removed."""
    from .lock import break_lock, lock_identity

    lock = os.path.abspath(p) + ".lock"
    before = lock_identity(lock)
    if before is None:
        return False
    time.sleep(still)
    if lock_identity(lock) != before:
        return False
    return break_lock(lock, before)


class JournalDamage:
    """What ``scan_journal`` found: the line number and byte offset of the first bad line,
    why it is bad, and ``repair``: how to fix it, if it is a torn record (``"truncate"``:
    the last line is a piece; ``"drop-prefix"``: a piece with a whole record appended, whose
    piece is ``prefix`` bytes long)."""

    def __init__(self, line: int, offset: int, why: str, repair: str | None = None,
                 prefix: int = 0) -> None:
        self.line, self.offset, self.why, self.repair, self.prefix = (line, offset, why,
                                                                      repair, prefix)


def _record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """``raw`` (one line, newline stripped) as a journal record, or None and why not."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (json.JSONDecodeError, RecursionError):
        return None, "not a JSON record"
    if not isinstance(rec, dict) or type(rec.get("op_code")) is not int \
            or not isinstance(rec.get("worker_id"), str):
        return None, "not an Optuna journal record (op_code, worker_id)"
    return rec, ""


def _torn_piece(raw: bytes) -> bool:
    """Whether ``raw`` can be the start of a record cut short."""
    return raw.startswith(RECORD_START) or RECORD_START.startswith(raw)


def _split_torn(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(len(piece), record)`` when ``raw`` is a torn piece followed by a whole record."""
    if not raw.startswith(RECORD_START[:1]):
        return None
    at = raw.rfind(RECORD_START)
    while at > 0:
        rec, _ = _record(raw[at:])
        if rec is not None and _torn_piece(raw[:at]):
            return at, rec
        at = raw.rfind(RECORD_START, 0, at)
    return None


def _replayer(optuna: Any) -> Any:
    """Optuna's journal replay (to find the record that does not apply), if importable."""
    try:
        from optuna.storages.journal._storage import JournalStorageReplayResult
    except ImportError:  # pragma: no cover - a newer Optuna moved it
        return None
    return JournalStorageReplayResult(f"gpunet-check-{os.getpid()}-")


def scan_journal(optuna: Any, p: Path) -> JournalDamage | None:
    """The first damage in journal ``p`` (None: every line is a record that replays)."""
    replay = _replayer(optuna)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset, n = 0, 0
        while offset < size:
            line = f.readline(MAX_LINE + 1)
            n += 1
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE:
                    return JournalDamage(n, offset, f"a line over {MAX_LINE >> 20} MiB")
                # a lone line must look like a record; after records, any piece of one will
                ok = line.startswith(RECORD_START) if n == 1 else _torn_piece(line)
                return JournalDamage(n, offset, "a record cut short (no newline)",
                                     "truncate" if ok else None)
            raw = line.rstrip(b"\r\n")
            rec, why = _record(raw)
            prefix = 0
            if rec is None:
                split = _split_torn(raw)
                if split is None:
                    return JournalDamage(n, offset, why)
                prefix, rec = split
            if replay is not None:
                try:
                    replay.apply_logs([rec])
                except Exception as e:  # noqa: BLE001 - a record that does not apply
                    return JournalDamage(n, offset, f"the record does not apply "
                                         f"({type(e).__name__}: {_reason(e, None)})")
            if prefix:
                return JournalDamage(n, offset, "a record cut short, then another appended "
                                     "to it", "drop-prefix", prefix)
            offset += len(line)
    return None


def check_journal(optuna: Any, p: Path,
                  say: Callable[[str, dict[str, Any]], None] | None = None) -> None:
    """Raise ``StorageError`` naming ``p`` and the line if the journal is damaged; repair a
    torn record under the journal's lock (``say("journal-repaired", ...)``, else a warning)."""
    dmg = scan_journal(optuna, p)
    if dmg is not None and dmg.repair is not None:
        dmg = _repair_under_lock(optuna, p, say)
    if dmg is None:
        return
    if dmg.line == 1:
        raise StorageError(f"storage {p} is not an Optuna study journal (line 1: {dmg.why}); "
                           "give a new journal path or an Optuna storage URL")
    raise StorageError(f"study journal {p} is damaged at line {dmg.line}: {dmg.why}")


def _repair_under_lock(optuna: Any, p: Path,
                       say: Callable[[str, dict[str, Any]], None] | None) -> JournalDamage | None:
    """Repair torn records one by one under Optuna's journal lock (a writer may have finished
    a line meanwhile: each is found again under the lock); returns the damage left, if any."""
    lock = journal_lock(optuna, p)
    while not lock.acquire():
        time.sleep(0.05)
    try:
        for _ in range(1000):
            dmg = scan_journal(optuna, p)
            if dmg is None or dmg.repair is None:
                return dmg
            _repair(p, dmg)
            msg = (f"study journal {p}: removed a record cut short at line {dmg.line} "
                   "(left by an interrupted write); every complete record is kept")
            if say is not None:
                say("journal-repaired", {"file": str(p), "line": dmg.line, "message": msg})
            else:
                warnings.warn(msg, stacklevel=3)
        return scan_journal(optuna, p)
    finally:
        lock.release()


def _repair(p: Path, dmg: JournalDamage) -> None:
    """Drop a torn piece: truncate the final one, or cut a piece out in front of a record
    (rewriting the file atomically; other workers reopen it by name for every read)."""
    from ..fileio import atomic_write_bytes

    if dmg.repair == "truncate":
        with open(p, "r+b") as f:
            f.truncate(dmg.offset)
            f.flush()
            os.fsync(f.fileno())
        return
    data = p.read_bytes()
    atomic_write_bytes(p, data[:dmg.offset] + data[dmg.offset + dmg.prefix:])


# ====================================================================== relational databases
def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        yield x
        x = x.__cause__ or x.__context__


def _transient(e: BaseException) -> bool:
    """Whether ``e`` comes from a lost or refused database connection (worth retrying): one
    anywhere in its chain, including a session left needing a rollback by a lost connection
    (Optuna wraps that in ``StorageInternalError``)."""
    try:
        from sqlalchemy import exc
    except ImportError:  # pragma: no cover - optuna depends on SQLAlchemy
        return False
    for x in _chain(e):
        if isinstance(x, (exc.OperationalError, exc.InterfaceError, exc.PendingRollbackError)):
            return True
        if isinstance(x, exc.DBAPIError) and x.connection_invalidated:
            return True
    return False


def _drop_session(storage: Any) -> None:
    """Discard the storage's database session after a lost connection, so the retry starts a
    fresh one instead of reusing a transaction that can only be rolled back."""
    remove = getattr(storage, "remove_session", None)
    if remove is not None:
        with contextlib.suppress(Exception):
            remove()


class _Retry:
    """Shared retry state of one storage: since when the database is unreachable. Calls keep
    retrying until ``retry_for`` seconds passed since the first failure, then fail at once
    until a call succeeds again."""

    def __init__(self, storage: str, retry_for: float) -> None:
        self.storage, self.retry_for = storage, float(retry_for)
        self.down_since: float | None = None
        self.lock = threading.Lock()

    def call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried while the connection is lost (see the class)."""
        delay, attempt = 0.5, 0
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as e:
                if not _transient(e):
                    if attempt and name == "set_trial_state_values" \
                            and type(e).__name__ == "UpdateFinishedTrialError":
                        return True   # the first attempt was committed after all
                    if _database_error(e):
                        raise StorageError(f"the study storage, {target(self.storage)}, "
                                           f"failed: {_reason(e, _password(self.storage))}"
                                           ) from None
                    raise
                if args:
                    _drop_session(args[0])
                now = time.monotonic()
                with self.lock:
                    self.down_since = self.down_since or now
                    left = self.down_since + self.retry_for - now
                if left <= 0:
                    raise StorageError(
                        f"lost the connection to {target(self.storage)} for "
                        f"{self.retry_for:g} s: {_reason(e, _password(self.storage))}; the "
                        "study is kept there: rerun the same command to continue") from None
                time.sleep(min(delay, left))
                delay, attempt = min(2 * delay, MAX_BACKOFF), attempt + 1
                continue
            if self.down_since is not None:
                with self.lock:
                    self.down_since = None
            return out


def _database_error(e: BaseException) -> bool:
    """An error of the database itself (SQLAlchemy's, or Optuna's wrapper of one)."""
    try:
        from sqlalchemy import exc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, exc.SQLAlchemyError) or isinstance(e.__cause__, exc.SQLAlchemyError)


_RDB_CLASS: list[Any] = []


def _retrying_rdb(optuna: Any) -> Any:
    """``RDBStorage`` with every public method, and the private ones Optuna's cache calls,
    run through the instance's ``_Retry``."""
    if _RDB_CLASS:
        return _RDB_CLASS[0]
    base = optuna.storages.RDBStorage

    def wrap(name: str) -> Callable[..., Any]:
        fn = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._gpunet_retry.call(name, fn, self, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = fn.__doc__
        return method

    names = [n for n, v in vars(base).items() if callable(v) and not n.startswith("_")
             and n not in ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
                           "get_failed_trial_callback", "remove_session", "upgrade")]
    # and the private methods Optuna's own caching layer (_CachedStorage) calls instead
    private = [n for n in ("_get_stale_trial_ids", "_get_trials", "_create_new_trial",
                           "_get_best_trial_id", "_set_trial_param") if hasattr(base, n)]
    cls = type("RetryingRDBStorage", (base,), {n: wrap(n) for n in [*names, *private]})
    _RDB_CLASS.append(cls)
    return cls


def _rdb_storage(optuna: Any, s: str, heartbeat: float | None, stale_after: float | None,
                 retry_for: float) -> Any:
    """A retrying ``RDBStorage`` on ``s``; tables created under the schema lock."""
    secret = _password(s)
    try:
        from sqlalchemy.engine import make_url

        dialect = make_url(s).get_backend_name()
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's URL errors vary
        raise ConfigError(f"storage {redact(s)} is not a valid database URL: "
                          f"{_reason(e, secret)}") from None
    s = _with_driver(s)
    kw: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if dialect == "postgresql" and "connect_timeout" not in s:
        kw["engine_kwargs"]["connect_args"] = {"connect_timeout": 10}
    if heartbeat is not None:
        kw["heartbeat_interval"] = max(1, math.ceil(heartbeat))
        kw["grace_period"] = max(kw["heartbeat_interval"] + 1, math.ceil(stale_after or 0))
    cls = _retrying_rdb(optuna)
    from sqlalchemy.exc import NoSuchModuleError

    try:
        with _schema_lock(s, dialect):
            store = _create_with_retry(cls, s, kw)
    except NoSuchModuleError:
        raise ConfigError(f"storage {redact(s)}: unknown kind of database {dialect!r}; give a "
                          "journal file path or a postgresql://, mysql:// or sqlite:/// URL"
                          ) from None
    except ImportError:
        hint = ("pip install 'gpunet[postgres]'" if dialect == "postgresql"
                else f"install a Python driver for {dialect}")
        raise ConfigError(f"storage {redact(s)} needs a database driver: {hint}") from None
    except (GpunetError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - connection, authentication, missing database...
        raise StorageError(f"cannot open the study storage, {target(s)}: "
                           f"{_reason(e, secret)}") from None
    store._gpunet_retry = _Retry(s, retry_for)
    return store


def _with_driver(s: str) -> str:
    """``postgresql://`` as ``postgresql+psycopg://`` where psycopg 3 is installed and
    psycopg2 is not (SQLAlchemy before 2.1 defaults to psycopg2; ``gpunet[postgres]``
    installs psycopg 3)."""
    import importlib.util

    from sqlalchemy.engine import make_url

    u = make_url(s)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return s


@contextlib.contextmanager
def _schema_lock(s: str, dialect: str) -> Any:
    """Hold a PostgreSQL advisory lock (other dialects: nothing) while Optuna creates or
    checks its tables: the first worker creates them, the others then find them."""
    if dialect != "postgresql":
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    eng = sqlalchemy.create_engine(s, poolclass=NullPool,
                                   connect_args={} if "connect_timeout" in s
                                   else {"connect_timeout": 10})
    try:
        with eng.connect() as c:
            c.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    c.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                              {"k": SCHEMA_LOCK_KEY})
    finally:
        eng.dispose()


def _create_with_retry(cls: Any, s: str, kw: dict[str, Any], attempts: int = 5) -> Any:
    """``cls(s, **kw)``, again after an ``IntegrityError`` / ``ProgrammingError`` from a
    table creation that raced with another process (dialects without the schema lock)."""
    from sqlalchemy import exc

    for k in range(attempts):
        try:
            return cls(s, **kw)
        except (exc.IntegrityError, exc.ProgrammingError):
            if k == attempts - 1:
                raise
            time.sleep(0.2 * (k + 1))
    raise AssertionError("unreachable")  # pragma: no cover
