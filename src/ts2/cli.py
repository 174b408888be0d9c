"""How every ``python -m ts2.<stage>`` ends: one line for Ctrl-C and for a refused input, a traceback for a bug.

Every entry point's ``if __name__ == "__main__":`` calls :func:`run` with its ``main`` and what a rerun does
after a Ctrl-C; a Hydra entry point also decorates its task function with :func:`task` (below
``@hydra.main``), so that Hydra does not wrap a refusal in its own report. Then:

- **Ctrl-C** (SIGINT) anywhere in the stage prints one line, e.g. ``interrupted; rerun the same command to
  resume``, and exits with status 130 (128 + SIGINT, the shell's convention), without a traceback.
- **A refused input** exits with status 1 and prints ``error: <message>``: an error that ts2's own code raised
  on purpose (its message names the setting or file and the fix: a ``ValueError``, ``TypeError``, ``OSError``,
  ``ImportError`` or ``RuntimeError`` raised in ``src/ts2``, also when Hydra's ``instantiate`` wraps it) or a
  Hydra config error (a mistyped key or value).
- **Anything else** (an error raised inside a library, an ``AssertionError``, a ``KeyError``) is a bug: its
  traceback is printed as usual, and the exit status is 1.

``HYDRA_FULL_ERROR=1`` (Hydra's own switch) shows the full traceback of every error, refusals included.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

RESUME = "interrupted; rerun the same command to resume"
RERUN = "interrupted; rerun the same command"
TRAIN = "interrupted; rerun the same command with train.resume=true to continue from the last checkpoint"
EVALUATE = "interrupted; rerun the same command to resume (judgments, rewards and embeddings are cached)"
INTERRUPTED_STATUS = 130  # 128 + SIGINT

_PACKAGE = Path(__file__).resolve().parent
_REFUSALS = (ValueError, TypeError, OSError, ImportError, RuntimeError)
_BUGS = (AssertionError, LookupError, AttributeError, NameError, RecursionError)


def _raised_in_ts2(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback (its ``raise``) is in the ts2 package."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def is_config_error(err: BaseException) -> bool:
    """A Hydra/OmegaConf error about the command line or the config files (composition, override, type)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, HydraException | OmegaConfBaseException)


def is_refusal(err: BaseException) -> bool:
    """An error with a message for the user rather than a bug (see the module docstring)."""
    if is_config_error(err):
        return True
    return isinstance(err, _REFUSALS) and not isinstance(err, _BUGS) and _raised_in_ts2(err)


def error_line(err: BaseException) -> str:
    """``error: <message>``, with the messages of its causes for a Hydra config error (what Hydra prints)."""
    parts, seen = [], err
    while seen is not None:
        text = str(seen).strip()
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__ if is_config_error(err) else None
    return "error: " + "\n".join(parts or [type(err).__name__])


def _close_progress_bars() -> None:
    """Close tqdm bars now, so that their last redraw comes before the interrupted line, not after it."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 (a bar in a broken state: nothing to redraw)
            pass


_full_error = False  # the user's HYDRA_FULL_ERROR=1: show every traceback


def _unwrapped(err: BaseException) -> BaseException:
    """The error a ``_target_`` raised itself, when Hydra's ``instantiate`` wrapped it."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def refuse(err: Exception) -> NoReturn:
    """Exit 1 with ``err``'s one-line message when it is a refusal; re-raise it otherwise (a bug)."""
    inner = _unwrapped(err)
    shown = inner if inner is not err and is_refusal(inner) else err
    if _full_error or not is_refusal(shown):
        raise err
    print(error_line(shown), file=sys.stderr)
    sys.exit(1)


def task(fn: F) -> F:
    """Decorate a Hydra task function (below ``@hydra.main``): a refusal exits with its one line, before Hydra
    would print "Error executing job" and a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            refuse(err)

    return wrapper  # type: ignore[return-value]


def run(main: Callable[[], Any], *, interrupted: str = RESUME, check_overrides: bool = False) -> NoReturn:
    """Run an entry point's ``main`` and exit: its int return value (None: 0), 1 for a refused input (one line),
    130 on Ctrl-C (the ``interrupted`` line). ``check_overrides``: a Hydra entry point, whose arguments are
    checked for an unquoted ``=`` (:func:`ts2.conf.check_quoting`) and a SLURM launcher without SLURM
    (:func:`ts2.conf.check_launcher`) first."""
    global _full_error
    before = os.environ.get("HYDRA_FULL_ERROR")
    _full_error = before == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises a config error here instead of printing it
    try:
        if check_overrides:
            from ts2.conf import check_launcher, check_quoting

            check_quoting(sys.argv[1:])
            check_launcher(sys.argv[1:])
        code = main()
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"\n{interrupted}", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_STATUS)
    except Exception as err:
        try:
            refuse(err)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
    sys.exit(code if isinstance(code, int) else 0)
