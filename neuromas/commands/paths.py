"""Output paths checked before anything runs: a run folder (`--out DIR`) and an output file (`-o FILE`).

Each check raises UserError (exit 2) naming the option, the path and what is wrong with
it, so that no model loads, and no work is done, for a result that cannot be written.
Paths are probed the way they will be used: a folder is made (with its parents) and a
file made in it, an existing file is opened for appending (nothing is written), a new
file is made and removed again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from neuromas.diagnostics import UserError


def check_out_folder(text: str, option: str = "--out") -> Path:
    """The run folder `text`, made if missing and probed for writing; raises UserError."""
    path = _named(text, option, "folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} '{text}' is a file, not a folder: choose a folder for the run", exit_code=2)
    _refuse_under_a_file(path, text, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{option} '{text}': cannot write a folder there ({_reason(err)})", exit_code=2) from None
    return path


def check_out_file(text: str, option: str = "-o") -> Path:
    """The output file `text`, its folder made if missing, probed for writing without
    changing it; raises UserError."""
    path = _named(text, option, "file")
    if text.endswith(os.sep) or path.is_dir():
        raise UserError(f"{option} '{text}' is a folder: name a file to write", exit_code=2)
    _refuse_under_a_file(path, text, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("ab"):
                pass
        else:
            with path.open("xb"):
                pass
            path.unlink()
    except OSError as err:
        raise UserError(f"{option} '{text}': cannot write this file ({_reason(err)})", exit_code=2) from None
    return path


def _named(text: str, option: str, kind: str) -> Path:
    if not text or not text.strip():
        raise UserError(f"{option} is empty: name a {kind}", exit_code=2)
    if "\0" in text:
        raise UserError(f"{option} {text!r}: a path cannot hold a NUL character", exit_code=2)
    path = Path(text)
    if path.resolve() == Path(path.resolve().anchor):
        raise UserError(f"{option} '{text}' is the root folder: name a {kind} below it", exit_code=2)
    return path


def _refuse_under_a_file(path: Path, text: str, option: str) -> None:
    for ancestor in path.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"{option} '{text}' is under '{ancestor}', which is a file, not a folder", exit_code=2)
            return


def _reason(err: OSError) -> str:
    return err.strerror or str(err)
