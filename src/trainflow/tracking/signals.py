"""SIGINT and SIGTERM: how a step, a sweep worker and a trial are stopped, in one place.

A stopped step ends its run KILLED (not FAILED) and exits 128+signal, so
whoever stopped it can tell an interruption from an error. Four tools:

- `raise_interrupt`, a handler that unwinds the stack like Ctrl-C does
  (Lightning turns KeyboardInterrupt into a graceful teardown) and notes
  which signal it was (`interruption()`);
- `note_signals` and `note_only`, which only note a signal while a run is
  being made or ended, where raising midway could leave a run RUNNING forever;
- `DeferredSignals`, which holds a signal over a span of code (a sweep's trial
  claim, the study being told) and delivers it after;
- `SignalsSince`, for loops that start new work (a sweep's claims, a
  pipeline's steps): a KeyboardInterrupt can be lost, the signal is not.

Python runs a signal's handler between two bytecodes of whatever the main
thread runs, a finalizer or a weakref callback included (the garbage
collector runs them at any allocation). A KeyboardInterrupt raised there is
printed ("Exception ignored in ...") and dropped: the fit goes on as if no one
had asked it to stop. Every handler here counts the signals it sees, so a
loop still stops before its next piece of work.

Nor does `raise_interrupt` raise inside an import. An import it interrupts
is left half-done: its module is dropped from sys.modules, but what it
already imported stays, half-initialised (torch._dynamo, sympy, triton's
native library). Importing them again later fails with AttributeErrors or
aborts the process (SIGABRT). A sweep's own process imports the model code
while its workers already train, and a step imports lazily, so a Ctrl-C
lands in an import often enough.

Nor does it raise inside a database call: SQLAlchemy, which MLflow's
database stores (the embedded sqlite one) and Optuna's RDB storage run on,
and MLflow's stores themselves, which read query results inside their
sessions. Interrupted between a query and the reading of its rows, the
statement lives on in the unwinding stack, and with it sqlite's lock on the
file: the run's own KILLED status waits out the busy timeout and fails, and
so does every other process writing to that store (a sweep's workers hung
so). Such a signal is held until the outermost import or database call it
landed in returns (a profile function watches for that return), then sent
again to the main thread, to whatever Python handler is installed then. A
second signal meanwhile unwinds at once: Ctrl-C twice always stops a
process, even one stuck in an import or a database call. Under a profiler
(`sys.getprofile()` set), whose place that watch would take, a signal
unwinds at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handlers = dict[signal.Signals, Any]


class _Interrupted:
    """Which signal asked the process to stop, so its run ends KILLED, not FAILED."""

    signum: int | None = None
    seen = 0  # stop signals our handlers saw in this process; never reset (SignalsSince)
    last: int | None = None


def _count(signum: int) -> None:
    _Interrupted.seen += 1
    _Interrupted.last = signum


def interruption() -> int | None:
    """The signal (SIGINT, SIGTERM) that stopped the last step, if one did: a caller ends its own run KILLED."""
    return _Interrupted.signum


def exit_status(default: int = signal.SIGINT) -> int:
    """128 + the signal that stopped this process: the shell's convention, which `mlflow run` passes on."""
    return 128 + int(_Interrupted.signum or default)


_IMPORT_MACHINERY = "<frozen importlib._bootstrap>"
# MLflow's database stores, which iterate query results inside their sessions.
_MLFLOW_SESSIONS = os.sep + "sqlalchemy_store.py"


class _Held:
    """A stop signal that landed inside an import or a database call, delivered as that call returns."""

    call: FrameType | None = None  # the outermost such frame: its return delivers the signal
    signum = 0
    due = False  # the handler's next call is that delivery: it unwinds wherever it lands


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """A handler: note the signal and unwind like Ctrl-C; inside an import or a database call, once it returns."""
    due, _Held.due = _Held.due, False
    _count(signum)
    _Interrupted.signum = signum
    if not due and _Held.call is None:
        call = _unsafe_call(frame)
        if call is not None and sys.getprofile() is None:  # under a profiler, unwind at once
            _Held.call, _Held.signum = call, signum
            sys.setprofile(_on_event)
            return
    _drop_hold()  # a second signal: no delivery of the first comes after this interrupt
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _on_event(frame: FrameType, event: str, arg: object) -> None:
    """The main thread's profile function while a signal is held: delivers it as the held call returns.

    Delivered as a signal to this thread, so the handler runs at the next
    bytecode boundary, which is in the caller (or at the very start of
    whatever it calls next): nothing of the database call or import is left.
    With SIG_DFL back (the step ended meanwhile) it would kill a process
    whose run already ended well, so it is dropped then.
    """
    if event != "return" or frame is not _Held.call:
        return
    signum = _Held.signum
    _drop_hold()
    handler = signal.getsignal(signum)
    if callable(handler):
        _Held.due = handler is raise_interrupt
        signal.pthread_kill(threading.get_ident(), signum)


def _drop_hold() -> None:
    if _Held.call is not None:
        _Held.call = None
        sys.setprofile(None)


def _unsafe_call(frame: FrameType | None) -> FrameType | None:
    """The outermost frame of an import or a database call (SQLAlchemy's, or an MLflow
    database store's) that `frame` runs inside, if any (see above)."""
    database = sys.modules.get("sqlalchemy")  # not imported: no database call can be running
    inside = os.path.dirname(database.__file__ or "") + os.sep if database is not None else None
    outermost = None
    while frame is not None:
        name = frame.f_code.co_filename
        if name == _IMPORT_MACHINERY or (inside and name.startswith(inside)) or name.endswith(_MLFLOW_SESSIONS):
            outermost = frame
        frame = frame.f_back
    return outermost


def _note(signum: int, frame: FrameType | None) -> None:
    _count(signum)
    _Interrupted.signum = _Interrupted.signum or signum


def note_signals() -> Handlers:
    """Only note SIGINT/SIGTERM from here; the handlers found, for `restore`."""
    _Interrupted.signum = None
    return {s: signal.signal(s, _note) for s in STOP_SIGNALS}


def note_only(handlers: Handlers) -> None:
    """While a run is being ended: a signal is noted, not raised, so the run still gets its status."""
    for signum in handlers:
        signal.signal(signum, _note)


def raise_on_signals(handlers: Handlers) -> None:
    """From here a signal unwinds the stack; one noted meanwhile does so at once."""
    for signum in handlers:
        signal.signal(signum, raise_interrupt)
    if _Interrupted.signum is not None:
        raise KeyboardInterrupt(signal.Signals(_Interrupted.signum).name)


def restore(handlers: Handlers) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


class DeferredSignals:
    """SIGINT and SIGTERM held (recorded, not acted on) while `holding`; the held one delivered after.

    Starts holding. `release()` delivers a held signal and lets the next ones
    through to the handlers found on entry; `hold()` holds again, taking the
    handlers back from any code (a step's run, Lightning) that installed its
    own meanwhile. On a clean exit the handlers found on entry come back and
    a held signal is sent again, so it acts exactly as it would have, only
    later. An exception already unwinding carries the interruption: a held
    signal is then dropped. Outside the main thread signals cannot be
    handled, and nothing is held.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.holding = True
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        pending, self.pending = self.pending, None
        if pending is not None and exc_type is None:
            os.kill(os.getpid(), pending)

    def hold(self) -> None:
        self.holding = True
        for signum in self._previous:
            signal.signal(signum, self._on_signal)

    def release(self) -> None:
        self.holding = False
        pending, self.pending = self.pending, None
        if pending is not None:
            self._deliver(pending, None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _count(signum)
        if self.holding:
            self.pending = self.pending or signum
        else:
            self._deliver(signum, frame)

    def _deliver(self, signum: int, frame: FrameType | None) -> None:
        handler = self._previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:  # the default action: end the process by that signal
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class SignalsSince:
    """Stop signals that came after it was made: a loop checks before each new piece of work.

    A signal whose KeyboardInterrupt was dropped (see above), or that came
    while a run was being ended (`note_only`), leaves the loop running;
    `raise_if_any` unwinds it then, as the handler would have, with the
    signal noted for the exit status.
    """

    def __init__(self) -> None:
        self._seen = _Interrupted.seen

    def raise_if_any(self) -> None:
        signum = _Interrupted.last
        if _Interrupted.seen != self._seen and signum is not None:
            _Interrupted.signum = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)
