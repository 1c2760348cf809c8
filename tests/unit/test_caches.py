"""The byte-bounded LRU and the snapshot store behind the llama.cpp backend's caches."""

from __future__ import annotations

import pytest

from vision_agent.backends.llama_cpp.caches import ByteBoundedLRU, PositionKeys, Snapshot, SnapshotStore, common_prefix


def test_lru_evicts_least_recently_used_by_bytes():
    lru = ByteBoundedLRU(100)
    lru.put("a", 1, 40)
    lru.put("b", 2, 40)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3, 40)
    assert "b" not in lru and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.bytes == 80
    assert lru.put("huge", 4, 101) is False and "huge" not in lru
    lru.put("a", 5, 10)  # replacing an entry updates the total
    assert lru.bytes == 50 and lru.get("a") == 5


def test_snapshot_store_finds_the_longest_shared_prefix_and_supersedes_prefixes():
    store = SnapshotStore(1000)
    store.add(Snapshot((1, 2, 3), "s1"), 100)
    store.add(Snapshot((1, 2, 3, 4, 5), "s2"), 100)  # extends s1, which goes
    store.add(Snapshot((9, 9), "s3"), 100)
    assert len(store) == 2 and store.bytes == 200
    best, shared = store.best([1, 2, 3, 4, 7])
    assert best.data == "s2" and shared == 4
    assert store.best([5])[0] is None
    assert store.covers([1, 2]) and not store.covers([1, 3])


def test_snapshot_store_respects_its_bound():
    store = SnapshotStore(250)
    for n in range(5):
        store.add(Snapshot((n,), n), 100)
    assert len(store) == 2 and store.bytes <= 250
    assert store.best([4])[0].data == 4 and store.best([0])[0] is None


def test_position_keys_name_images_apart_from_tokens():
    keys = PositionKeys()
    red, blue = keys.image("red", 3), keys.image("blue", 3)
    assert all(k < 0 for k in red + blue) and len(set(red + blue)) == 6
    assert keys.image("red", 3) == red
    assert common_prefix([1, 2, *red], [1, 2, *blue]) == 2


def test_position_keys_travel_to_another_process_by_image_name():
    ours, theirs = PositionKeys(), PositionKeys()
    theirs.image("other:4", 4)  # the other process numbered another image first
    keys = [5, *ours.image("a:2", 2), 6, *ours.image("b:3", 3), *ours.image("a:2", 2)]
    names, portable = ours.to_portable(keys)
    assert names == ["a:2", "b:3"]
    back = theirs.from_portable(names, portable)
    assert back == [5, *theirs.image("a:2", 2), 6, *theirs.image("b:3", 3), *theirs.image("a:2", 2)]
    with pytest.raises(ValueError):  # an image index beyond the names
        theirs.from_portable(["a:2"], [-(7 << 24)])
