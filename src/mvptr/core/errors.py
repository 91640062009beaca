"""The errors a user can cause, and how bad samples are skipped.

Every error that is the user's to fix (a bad file, a bad setting, an output directory
that cannot be written, an untrusted pickle) is a :class:`MvptrError`; the command line
prints such an error as one line and exits with status 2. Any other exception is a bug:
it keeps its traceback (exit status 1).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MvptrError", "ConfigError", "WrongTypeError", "FormatError", "MissingFileError", "NotFiniteError",
           "OutputDirError", "OutputExistsError", "HubError", "UntrustedPickleError", "SkippedSamples", "skip_or_raise"]


class MvptrError(Exception):
    """Base class of the errors the user can fix: one line on the command line, exit status 2."""


class ConfigError(MvptrError, ValueError):
    """A configuration value, command-line option, argument of the Python API, or combination
    of them that cannot apply."""


class WrongTypeError(MvptrError, TypeError):
    """An argument of the Python API of the wrong type (a number where a path goes, one string
    where a list of strings goes); a ``TypeError``, as Python's own are."""


class UntrustedPickleError(MvptrError, ValueError):
    """A pickle file to load without the caller's word that its source is trusted."""


class FormatError(MvptrError, ValueError):
    """Input that does not follow the expected dataset format.

    ``reason`` names the kind of problem ("bad base64", "empty caption", ...); skipped
    samples are counted by it.
    """

    def __init__(self, message: str, reason: str = "malformed input"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return type(self), (str(self), self.reason)


class MissingFileError(MvptrError, FileNotFoundError):
    """A file or directory the user named (or one that must lie in it) that is not there."""


class NotFiniteError(MvptrError, ValueError):
    """NaN or infinite numbers from a model (scores, metrics): its training diverged, or its
    inputs hold such numbers; never averaged into a figure."""


class OutputDirError(MvptrError, OSError):
    """An output directory that cannot take what a command will write (the user's to fix)."""


class OutputExistsError(OutputDirError, FileExistsError):
    """An output that must not exist yet, and does: remove it or choose another path."""


class HubError(MvptrError, OSError):
    """A Hugging Face Hub repository that cannot be found, reached or written (the user's to fix)."""


class SkippedSamples:
    """Bad samples left out under ``--skip-bad``, counted by reason.

    Each entry keeps the error message, which names the file, line or image id.
    """

    def __init__(self):
        self.entries: list[dict] = []

    def add(self, err: FormatError, samples: int = 1) -> None:
        """Record ``err``; ``samples`` is how many samples it removed (e.g. all captions of an image)."""
        self.entries.append({"reason": getattr(err, "reason", "malformed input"), "samples": samples,
                             "message": str(err)})

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self, examples: int = 5) -> dict:
        """Totals, and per reason: problems, samples left out and the first messages."""
        by_reason: dict[str, dict] = {}
        for e in self.entries:
            r = by_reason.setdefault(e["reason"], {"problems": 0, "samples": 0, "first": []})
            r["problems"] += 1
            r["samples"] += e["samples"]
            if len(r["first"]) < examples:
                r["first"].append(e["message"])
        return {"skipped_samples": sum(e["samples"] for e in self.entries), "problems": len(self.entries),
                "by_reason": by_reason}

    def report(self) -> str:
        """Human-readable summary, one line per reason plus its first message."""
        s = self.summary(examples=1)
        if not self.entries:
            return "skipped: nothing"
        lines = [f"skipped {s['skipped_samples']} samples ({s['problems']} problems):"]
        for reason, r in sorted(s["by_reason"].items(), key=lambda kv: -kv[1]["samples"]):
            lines.append(f"  {reason}: {r['samples']} samples, {r['problems']} problems; first: {r['first'][0]}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """The summary plus every entry, as JSON."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**self.summary(), "entries": self.entries}, f, indent=1)


def skip_or_raise(skip: SkippedSamples | None, err: FormatError, samples: int = 1) -> None:
    """Record a bad input of ``samples`` samples when skipping bad ones; raise it otherwise."""
    if skip is None:
        raise err
    skip.add(err, samples)

