"""Adapter slots and saved adapter folders -> versioned adapter names, ids and folders for an engine.

An engine that caches adapters (vLLM) must never see new weights under a name or id
it already knows: vLLM keys its prefix cache by adapter *name* and its loaded adapters
by *id*, so reusing either would serve stale KV or stale weights. `AdapterVersions`
therefore gives every published adapter a new name (`<slot>@v<version>`, '@' never
appears in a slot name) and a new integer id (1, 2, 3, ...; never reused), keeps one
current version per slot, and says which versions a publication replaced (to drop).

A long-lived server outlives the processes that load adapters into it, and each of them
counts versions from 1 again: a registry made with a `session` id puts it in every name
(`<slot>@<session>-v<version>`), so two processes, or a process and the one it restarts,
never ask a server for a name it already has. `new_session_id()` makes one.

Folders: publication n lives under `<root>/v<n>/<slot>/` (`next_folder()` is where
the next one is written); `remove_folders` deletes replaced versions' folders, and
only ever folders under `root`.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple


class AdapterVersion(NamedTuple):
    """One published version of one slot: what the engine registers."""

    slot: str
    version: int  # the publication that produced it (1, 2, ...)
    lora_id: int  # the engine's integer id: unique over the life of the registry, >= 1
    path: Path  # peft folder: adapter_config.json + adapter_model.safetensors
    session: str = ""  # the registry's session id ("" for an engine only this process uses)

    @property
    def name(self) -> str:
        """The engine's adapter name (vLLM keys cached prefixes by it)."""
        if self.session:
            return f"{self.slot}@{self.session}-v{self.version}"
        return f"{self.slot}@v{self.version}"


def new_session_id() -> str:
    """A fresh session id for adapter names: 8 random hex digits (a clash between two
    live sessions on one server has odds of about 1 in 4 billion)."""
    return secrets.token_hex(4)


def session_of(name: str) -> str | None:
    """The session id in an adapter name `<slot>@<session>-v<n>`; None for other names."""
    _, at, rest = name.rpartition("@")
    session, dash, version = rest.rpartition("-v")
    if not at or not dash or not session or not version.isdigit():
        return None
    return session


class Publication(NamedTuple):
    """What one `publish` changed: versions to register, and the versions they replace."""

    version: int
    added: tuple[AdapterVersion, ...]
    dropped: tuple[AdapterVersion, ...]


class AdapterVersions:
    """The current version of every slot, and the bookkeeping to publish new ones."""

    def __init__(self, root: Path, slots: Iterable[str], *, session: str = ""):
        if session and not all(char.isalnum() for char in session):
            raise ValueError(f"a session id is letters and digits only, got {session!r}")
        self.root = Path(root)
        self.slots = tuple(dict.fromkeys(slots))
        self.session = session
        self._current: dict[str, AdapterVersion] = {}
        self._last_id = 0
        self._version = 0

    @property
    def version(self) -> int:
        """Publications so far (0: nothing published yet)."""
        return self._version

    def owns(self, name: str) -> bool:
        """Whether an engine's adapter name is one this registry gives out (its slots, its session)."""
        slot, at, rest = name.rpartition("@")
        prefix = f"{self.session}-v" if self.session else "v"
        return bool(at) and slot in self.slots and rest.startswith(prefix) and rest[len(prefix):].isdigit()

    def next_folder(self) -> Path:
        """The folder the next publication's slot folders go into (`<root>/v<n>`)."""
        return self.root / f"v{self._version + 1:06d}"

    def current(self, slot: str) -> AdapterVersion | None:
        """The slot's current version; None before its first publication. KeyError for an unknown slot."""
        if slot not in self.slots:
            raise KeyError(f"unknown adapter slot '{slot}' (slots: {', '.join(self.slots) or 'none'})")
        return self._current.get(slot)

    def published(self) -> dict[str, AdapterVersion]:
        """slot -> current version, for the slots published so far."""
        return dict(self._current)

    def publish(self, folders: Mapping[str, Path]) -> Publication:
        """Make each folder the new current version of its slot (slots in registry order).

        Raises ValueError for slots the registry does not know; an empty mapping
        publishes nothing and does not count as a publication.
        """
        unknown = [slot for slot in folders if slot not in self.slots]
        if unknown:
            raise ValueError(f"unknown adapter slot(s) {', '.join(unknown)} (slots: {', '.join(self.slots) or 'none'})")
        if not folders:
            return Publication(self._version, (), ())
        self._version += 1
        added, dropped = [], []
        for slot in (slot for slot in self.slots if slot in folders):
            self._last_id += 1
            version = AdapterVersion(slot, self._version, self._last_id, Path(folders[slot]), self.session)
            if slot in self._current:
                dropped.append(self._current[slot])
            self._current[slot] = version
            added.append(version)
        return Publication(self._version, tuple(added), tuple(dropped))

    def remove_folders(self, versions: Iterable[AdapterVersion]) -> None:
        """Delete the folders of replaced versions, and publication folders left empty.

        Folders outside `root` belong to someone else and are left alone.
        """
        root = self.root.resolve()
        for version in versions:
            path = version.path.resolve()
            if path == root or not path.is_relative_to(root):
                continue
            shutil.rmtree(path, ignore_errors=True)
            parent = path.parent
            if parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
