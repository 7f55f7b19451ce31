"""Adapter version bookkeeping: names, ids that are never reused, folders, what to drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuromas.runtime.models.adapter_versions import AdapterVersions, new_session_id, session_of

SLOTS = ("node-hidden-0", "node-hidden-1", "node-answer-0")


def saved(root: Path, slots) -> dict[str, Path]:
    """Folders shaped like save_adapters output: <root>/<slot>/adapter_model.safetensors."""
    folders = {}
    for slot in slots:
        folder = root / slot
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"w")
        folders[slot] = folder
    return folders


def test_nothing_is_published_at_first(tmp_path):
    versions = AdapterVersions(tmp_path, SLOTS)
    assert versions.version == 0
    assert versions.published() == {}
    assert versions.current("node-hidden-0") is None
    assert versions.next_folder() == tmp_path / "v000001"
    with pytest.raises(KeyError, match="node-mid-0"):
        versions.current("node-mid-0")


def test_each_publication_gets_new_names_and_ids_and_drops_what_it_replaces(tmp_path):
    versions = AdapterVersions(tmp_path, SLOTS)
    first = versions.publish(saved(versions.next_folder(), SLOTS))
    assert first.version == 1
    assert [v.name for v in first.added] == ["node-hidden-0@v1", "node-hidden-1@v1", "node-answer-0@v1"]
    assert [v.lora_id for v in first.added] == [1, 2, 3]
    assert [v.path for v in first.added] == [tmp_path / "v000001" / slot for slot in SLOTS]
    assert first.dropped == ()

    # Only the answer node changed: only it gets a new version.
    second = versions.publish(saved(versions.next_folder(), ["node-answer-0"]))
    assert [(v.name, v.lora_id) for v in second.added] == [("node-answer-0@v2", 4)]
    assert second.dropped == (first.added[2],)
    assert versions.current("node-hidden-0") == first.added[0]
    assert versions.current("node-answer-0") == second.added[0]

    third = versions.publish(saved(versions.next_folder(), SLOTS))
    assert [v.lora_id for v in third.added] == [5, 6, 7]
    assert set(third.dropped) == {first.added[0], first.added[1], second.added[0]}
    ids = [v.lora_id for p in (first, second, third) for v in p.added]
    names = [v.name for p in (first, second, third) for v in p.added]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)


def test_publication_order_follows_the_slots_not_the_mapping(tmp_path):
    versions = AdapterVersions(tmp_path, SLOTS)
    folders = saved(tmp_path / "in", reversed(SLOTS))
    assert [v.slot for v in versions.publish(folders).added] == list(SLOTS)


def test_unknown_slots_and_empty_publications(tmp_path):
    versions = AdapterVersions(tmp_path, SLOTS)
    with pytest.raises(ValueError, match="node-mid-0"):
        versions.publish({"node-mid-0": tmp_path})
    empty = versions.publish({})
    assert (empty.version, empty.added, empty.dropped) == (0, (), ())
    assert versions.version == 0


def test_remove_folders_deletes_dropped_versions_under_root_only(tmp_path):
    root = tmp_path / "versions"
    versions = AdapterVersions(root, SLOTS)
    versions.publish(saved(versions.next_folder(), SLOTS))
    second = versions.publish(saved(versions.next_folder(), SLOTS[:1]))
    versions.remove_folders(second.dropped)
    assert not (root / "v000001" / SLOTS[0]).exists()
    assert (root / "v000001" / SLOTS[1]).is_dir()  # still current
    assert (root / "v000002" / SLOTS[0]).is_dir()

    # Every slot replaced: the emptied publication folders go too.
    third = versions.publish(saved(versions.next_folder(), SLOTS))
    versions.remove_folders(third.dropped)
    assert sorted(path.name for path in root.iterdir()) == ["v000003"]

    # Folders published from outside root are never deleted.
    outside = saved(tmp_path / "elsewhere", SLOTS)
    versions.publish(outside)
    fifth = versions.publish(saved(versions.next_folder(), SLOTS))
    assert [v.path for v in fifth.dropped] == list(outside.values())
    versions.remove_folders(fifth.dropped)
    assert all(folder.is_dir() for folder in outside.values())


def test_a_session_id_goes_into_every_name_and_marks_what_the_registry_owns(tmp_path):
    mine = AdapterVersions(tmp_path / "mine", SLOTS, session="3f9a1c2e")
    other = AdapterVersions(tmp_path / "other", SLOTS, session=new_session_id())
    names = [v.name for v in mine.publish(saved(tmp_path / "a", SLOTS[:1])).added]
    assert names == ["node-hidden-0@3f9a1c2e-v1"]
    assert session_of(names[0]) == "3f9a1c2e" and session_of("node-hidden-0@v1") is None
    theirs = other.publish(saved(tmp_path / "b", SLOTS[:1])).added[0].name
    assert theirs != names[0] and session_of(theirs) == other.session  # two processes never share a name
    assert mine.owns(names[0]) and not mine.owns(theirs) and not other.owns(names[0])
    assert not mine.owns("node-hidden-0@v1") and not mine.owns("smol-base") and not mine.owns("zzz@3f9a1c2e-v1")
    plain = AdapterVersions(tmp_path / "plain", SLOTS)
    assert plain.owns("node-hidden-0@v1") and not plain.owns(names[0])
    with pytest.raises(ValueError, match="letters and digits only"):
        AdapterVersions(tmp_path, SLOTS, session="a-b")
