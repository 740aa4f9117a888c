"""Around the work of every training command: a user's mistake as one line, and nothing empty left behind.

Why one place: the training commands (train-teacher, distill, fit-outlier-head, calibrate, evaluate, export) read
configs, data sets and checkpoints that the user names, so each can fail on them. A 20-line traceback for a
missing folder hides the one line that matters, and a run folder made before the failure (holding only a log)
looks like a run. So an error the user can fix is printed as ``dicnet COMMAND: error: ...`` with exit code 2 (as
the bag tools do), and every output the command created is removed again, except a run folder holding ``last.pt``
(``--resume`` continues from it). Other exceptions (bugs) keep their traceback, after the same clean-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dicnet_ros.inference.base import BackendUnavailableError, ModelLoadError
from dicnet_ros.model.checkpoint import CheckpointError

#: What a user's input can raise: a bad config or data set (ValueError; ConfigError is one), a missing or
#: unwritable path (OSError), a checkpoint or model that cannot be used.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, CheckpointError, ModelLoadError,
                                            BackendUnavailableError)
RESUMABLE = "last.pt"


class Outputs:
    """The outputs a command is about to write, each recorded before it exists, so a failure removes what this
    command created (missing parent folders included) and nothing that was there before."""

    def __init__(self) -> None:
        self._created: list[Path] = []  # paths that did not exist when watched, outermost first

    def watch(self, path: str | Path | None) -> Path | None:
        """Record ``path`` (and its missing parent folders) as this command's output; returns it as a Path."""
        if path is None:
            return None
        path = Path(path)
        missing = [p for p in (path, *path.parents) if not p.exists()]
        self._created.extend(p for p in reversed(missing) if p not in self._created)
        return path

    def remove_created(self) -> list[Path]:
        """Remove what this command created, innermost first; returns the run folders kept for ``--resume``."""
        kept: list[Path] = []
        for path in reversed(self._created):
            if path.is_dir() and (path / RESUMABLE).is_file():
                kept.append(path)
            elif any(k.is_relative_to(path) for k in kept):
                continue
            elif path.is_dir():
                _close_logs_under(path)
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
        return kept


def _close_logs_under(folder: Path) -> None:
    """Detach the log files a run opened in ``folder`` (train.log) before the folder goes."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name is not None and Path(name).is_relative_to(folder.resolve()):
            root.removeHandler(handler)
            handler.close()


def run_command(command: str, work: Callable[[Outputs], int],
                also_user_errors: tuple[type[Exception], ...] = ()) -> int:
    """``work(outputs)`` with user errors as one line (exit 2), Ctrl-C as one line (exit 130), and the outputs it
    watched removed after any failure (on rank 0; the other ranks of a torchrun job only report)."""
    outputs = Outputs()
    rank = int(os.environ.get("RANK", "0"))
    prefix = f"dicnet {command}" + (f" (rank {rank})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")
    try:
        return work(outputs)
    except KeyboardInterrupt:
        kept = outputs.remove_created() if rank == 0 else []
        print(f"{prefix}: interrupted{_kept_note(kept) or '; nothing was kept'}", file=sys.stderr)
        return 130
    except (*USER_ERRORS, *also_user_errors) as exc:
        kept = outputs.remove_created() if rank == 0 else []
        print(f"{prefix}: error: {' '.join(str(exc).split()) or type(exc).__name__}{_kept_note(kept)}",
              file=sys.stderr)
        return 2
    except BaseException:
        if rank == 0:
            outputs.remove_created()
        raise


def _kept_note(kept: list[Path]) -> str:
    return "".join(f"; {k / RESUMABLE} kept (--resume continues from it)" for k in kept)
