"""The conversation store: real SQLite files, real image files, real processes writing at once and killed.

Hostile cases first: what is on disk may be damaged, foreign, newer, planted or edited, and several processes
write to one store at the same moment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import image_part, png_bytes
from vision_agent.core.messages import Message
from vision_agent.errors import ConfigError, StoreError
from vision_agent.sessions.store import (
    SCHEMA_VERSION,
    ConversationNotFound,
    StepRecord,
    Store,
    TurnRecord,
    make_title,
)

REPO = Path(__file__).resolve().parents[2]
RED = dict(size=(32, 24), color=(200, 30, 30))
BLUE = dict(size=(20, 30), color=(20, 40, 220))


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path, monkeypatch):
    """The user's own last.json is never imported into a test's store."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "store" / "conversations.db"


@pytest.fixture
def store(db_path):
    with Store.open(db_path) as opened:
        yield opened


def record(prompt: str, answer: str = "an answer", *, images=(), status: str = "ok", steps=()) -> TurnRecord:
    return TurnRecord(
        run_id=f"run-{prompt[:20]}",
        prompt=prompt,
        images=[image.sha256 for image in images],
        answer=answer,
        status=status,
        steps=list(steps),
        usage={"prompt_tokens": 10, "completion_tokens": 3},
    )


def commit(store: Store, cid: str, prompt: str, answer: str = "an answer", *, images=(), steps=(), status="ok"):
    messages = [Message.user(prompt, list(images))]
    for step in steps:
        messages.append(Message.assistant(f'{{"tool": "{step.tool}"}}'))
        messages.append(Message.user(f"observation: {step.output}"))
    if status in ("ok", "max_steps"):
        messages.append(Message.assistant(answer))
    return store.commit_turn(cid, record(prompt, answer, images=images, status=status, steps=steps), messages)


# -- round trip --------------------------------------------------------------------------------------------


def test_a_turn_comes_back_as_committed_with_its_images_stored_once(store):
    red, blue = image_part(**RED), image_part(**BLUE)
    cid = store.new_conversation("what is red", "demo", "/m/mmproj.gguf")
    step = StepRecord(tool="calculator", arguments={"expression": "2+2"}, ok=True, output="4")
    first = commit(store, cid, "what is red?", "red is a colour", images=[red], steps=[step])
    second = commit(store, cid, "and now both?", "two images", images=[red, blue])

    assert (first.index, second.index) == (0, 1)
    assert first.created_at > 0 and second.created_at >= first.created_at
    conversation = store.load(cid)
    assert conversation.turn_starts == [0, 4]
    assert [m.role for m in conversation.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert conversation.messages[0].images[0].rgb == red.rgb
    assert [i.sha256 for i in conversation.messages[4].images] == [red.sha256, blue.sha256]
    turns = store.turns(cid)
    assert [t.index for t in turns] == [0, 1]
    assert turns[0].steps == [step] and turns[0].images == [red.sha256]
    assert turns[0].usage == {"prompt_tokens": 10, "completion_tokens": 3}
    assert turns[1].answer == "two images" and turns[1].status == "ok"
    # Each image file once, by hash, whatever the number of turns that use it.
    assert sorted(p.name for p in store.images_dir.iterdir()) == sorted(f"{i.sha256}.png" for i in (red, blue))
    assert store.image_path(red.sha256).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = store.info(cid)
    assert (info.title, info.model, info.mmproj, info.turns) == ("what is red", "demo", "/m/mmproj.gguf", 2)


def test_list_is_newest_first_and_latest_is_the_last_updated(store):
    older = store.new_conversation("older", "m", None)
    newer = store.new_conversation("newer", "m", None)
    assert [c.id for c in store.list()] == [newer, older]
    commit(store, older, "back to the older one")
    assert store.latest() == older
    assert [c.id for c in store.list()] == [older, newer]
    assert [c.id for c in store.list(limit=1)] == [older]


def test_a_cancelled_turn_is_recorded_but_is_not_the_models_context(store):
    cid = store.new_conversation("t", "m", None)
    commit(store, cid, "first", "answered")
    cancelled = commit(store, cid, "second, cancelled", status="cancelled")
    assert cancelled.index == 1
    assert [t.status for t in store.turns(cid)] == ["ok", "cancelled"]
    assert [m.text for m in store.load(cid).messages] == ["first", "answered"]


def test_an_unknown_conversation_is_a_usage_error_exit_2(store):
    for call in (store.load, store.info, store.turns, store.delete, lambda c: store.rename(c, "x")):
        with pytest.raises(ConversationNotFound) as caught:
            call("0" * 32)
        assert caught.value.exit_code == 2
    with pytest.raises(ConversationNotFound):
        commit(store, "0" * 32, "orphan")


def test_resolve_takes_an_id_a_prefix_or_a_title_and_lists_candidates_when_ambiguous(store):
    a = store.new_conversation("Receipt totals", "m", None)
    b = store.new_conversation("Receipt from Lisbon", "m", None)
    assert store.resolve(a) == a
    assert store.resolve(a[:6]) == a or a[:6] == b[:6]
    assert store.resolve("receipt from") == b
    assert store.resolve("Receipt totals") == a
    with pytest.raises(ConversationNotFound) as caught:
        store.resolve("Receipt")
    assert caught.value.exit_code == 2
    assert "2 conversations" in str(caught.value) and a[:8] in str(caught.value) and b[:8] in str(caught.value)
    with pytest.raises(ConversationNotFound, match="no conversation matches"):
        store.resolve("nothing like it")
    with pytest.raises(ConversationNotFound):
        store.resolve("%")  # no LIKE pattern reaches SQL
    with pytest.raises(ConversationNotFound):
        store.resolve(a[:3])  # too short for an id prefix


def test_delete_removes_the_conversation_its_index_entries_and_only_unshared_images(store):
    red, blue = image_part(**RED), image_part(**BLUE)
    gone = store.new_conversation("to delete", "m", None)
    kept = store.new_conversation("to keep", "m", None)
    commit(store, gone, "zebra question", images=[red, blue])
    commit(store, kept, "other question", images=[red])
    store.delete(gone)
    assert [c.id for c in store.list()] == [kept]
    assert store.search("zebra") == []
    assert not store.image_path(blue.sha256).exists()
    assert store.image_path(red.sha256).exists()
    assert store.load(kept).messages[0].images[0].rgb == red.rgb
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (gone,)).fetchone() == (0,)
        assert db.execute("SELECT sha256 FROM images").fetchall() == [(red.sha256,)]


# -- hostile files -------------------------------------------------------------------------------------------


def _filled_store(path: Path, turns: int = 30) -> None:
    with Store.open(path) as store:
        cid = store.new_conversation("t", "m", None)
        for n in range(turns):
            commit(store, cid, f"question {n} " + "words " * 200, "answer " * 200)


@pytest.mark.parametrize("content", ["garbage", "sqlite_header_then_garbage", "truncated"])
def test_a_damaged_store_file_is_store_error_exit_14(db_path, content):
    db_path.parent.mkdir(parents=True)
    if content == "garbage":
        db_path.write_bytes(os.urandom(8192))
    elif content == "sqlite_header_then_garbage":
        db_path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    else:
        _filled_store(db_path)
        data = db_path.read_bytes()
        assert len(data) > 16384
        db_path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError) as caught:
        with Store.open(db_path) as store:  # a truncated file may open: the damage shows when it is read
            cid = store.latest()
            store.load(cid)
            store.turns(cid)
            store.search("question")
    assert caught.value.exit_code == 14
    assert "\n" not in str(caught.value) and str(db_path) in str(caught.value)


def test_a_store_from_a_newer_version_is_refused_not_migrated(db_path):
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer vision-agent") as caught:
        Store.open(db_path)
    assert caught.value.exit_code == 14
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)


def test_a_foreign_sqlite_database_is_left_alone(db_path):
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE bookmarks (url TEXT)")
    with pytest.raises(StoreError, match="something else"):
        Store.open(db_path)
    with sqlite3.connect(db_path) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["bookmarks"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory", "fifo_wal", "parent_is_a_file"])
def test_a_store_path_that_is_not_a_regular_file_is_refused_without_hanging(db_path, kind):
    db_path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(db_path)
    elif kind == "dev_zero":
        db_path.symlink_to("/dev/zero")
    elif kind == "directory":
        db_path.mkdir()
    elif kind == "fifo_wal":
        os.mkfifo(f"{db_path}-wal")
    else:
        db_path.parent.rmdir()
        db_path.parent.write_text("a file where the folder should be")
    with pytest.raises(StoreError) as caught:
        Store.open(db_path)
    assert caught.value.exit_code == 14


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_store_is_refused(db_path):
    Store.open(db_path).close()
    db_path.chmod(0)
    with pytest.raises(StoreError, match="not readable"):
        Store.open(db_path)


def test_a_store_held_by_another_writer_fails_after_the_busy_timeout_instead_of_hanging(db_path):
    with Store.open(db_path, busy_timeout_s=0.3) as store:
        cid = store.new_conversation("t", "m", None)
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
        started = time.monotonic()
        with pytest.raises(StoreError, match="busy") as caught:
            commit(store, cid, "waits")
        assert time.monotonic() - started < 20
        assert caught.value.exit_code == 14
        other.execute("ROLLBACK")
        other.close()
        assert commit(store, cid, "goes through once it is free").index == 0


# -- hostile values ------------------------------------------------------------------------------------------


def test_a_huge_prompt_is_stored_whole_and_found(store):
    prompt = "needle " + "x" * (4 * 1024 * 1024) + " haystack"
    cid = store.new_conversation(prompt, "m", None)
    commit(store, cid, prompt, "ok")
    assert store.turns(cid)[0].prompt == prompt
    assert store.load(cid).messages[0].text == prompt
    assert len(store.info(cid).title) <= 80
    assert [hit.conversation_id for hit in store.search("haystack needle")] == [cid]


@pytest.mark.parametrize(
    "query", ['"', '""', "AND OR NEAR(", "NOT", "*", "^x", "prompt: x", "a:b", "(", ")", "'", "NEAR(a b, 2)", "", " "]
)
def test_search_takes_the_users_text_as_words_never_as_query_syntax(store, query):
    cid = store.new_conversation("t", "m", None)
    commit(store, cid, "apples AND oranges NEAR the prompt: x", "answer")
    hits = store.search(query)
    assert all(hit.conversation_id == cid for hit in hits)


def test_search_finds_words_in_prompts_and_answers_with_a_snippet(store):
    a = store.new_conversation("a", "m", None)
    b = store.new_conversation("b", "m", None)
    commit(store, a, "what is on the receipt?", "the total is 42 euros")
    commit(store, b, "describe the cat", "a grey cat")
    hits = store.search("euros total")
    assert [(h.conversation_id, h.turn, h.title) for h in hits] == [(a, 0, "a")]
    assert "[euros]" in hits[0].snippet
    assert [h.conversation_id for h in store.search('"cat')] == [b]  # a stray quote is not syntax
    assert store.search("AND") == []  # the word, not the operator


def test_titles_lose_control_escape_and_bidi_characters(store):
    hostile = "\n  \n\x1b]52;c;aGVsbG8=\x07 Clipboard\x1b[2J \u202eevil\u2066 title\r\nsecond line"
    cid = store.new_conversation(hostile, "m", None)
    title = store.info(cid).title
    assert title == make_title(hostile)
    assert all(ch.isprintable() for ch in title) and "second" not in title
    assert "Clipboard" in title and "evil" in title
    store.rename(cid, "\x9b31m" + "long " * 40)
    renamed = store.info(cid).title
    assert len(renamed) == 80 and renamed.endswith("…") and all(ch.isprintable() for ch in renamed)
    with pytest.raises(ConfigError):
        store.rename(cid, "\x1b\x07\u202e")  # nothing visible left: a usage error
    untitled = store.new_conversation("", "m", None)
    commit(store, untitled, "\x1b[31mred\x1b[0m question\nmore")
    assert store.info(untitled).title == make_title("\x1b[31mred\x1b[0m question")
    lone = store.new_conversation("bad \ud800 surrogate", "m", None)  # from argv: not encodable as UTF-8
    assert store.info(lone).title == "bad \ufffd surrogate"


def test_a_replaced_or_missing_image_file_drops_its_turn_with_a_note(store):
    red, blue = image_part(**RED), image_part(**BLUE)
    cid = store.new_conversation("t", "m", None)
    commit(store, cid, "about red", images=[red])
    commit(store, cid, "no image")
    commit(store, cid, "about blue", images=[blue])
    # Another valid PNG in the red one's place: the hash no longer matches.
    store.image_path(red.sha256).write_bytes(png_bytes(size=(32, 24), color=(0, 255, 0)))
    store.image_path(blue.sha256).unlink()
    loaded = store.load_with_notes(cid)
    assert [m.text for m in loaded.conversation.messages] == ["no image", "an answer"]
    assert loaded.conversation.turn_starts == [0]
    assert len(loaded.problems) == 1
    assert "2 damaged turn(s)" in loaded.problems[0] and "turn 1" in loaded.problems[0]
    assert len(store.turns(cid)) == 3  # the record of what happened stays


def test_a_conversation_with_no_usable_turn_is_store_error(store):
    red = image_part(**RED)
    cid = store.new_conversation("t", "m", None)
    commit(store, cid, "about red", images=[red])
    store.image_path(red.sha256).write_bytes(b"not a png at all")
    with pytest.raises(StoreError, match="none of its 1 turns") as caught:
        store.load(cid)
    assert caught.value.exit_code == 14


def test_images_over_the_pixel_budget_drop_the_oldest_turns(db_path):
    from vision_agent.config import ImageSettings

    red, blue = image_part(**RED), image_part(**BLUE)
    with Store.open(db_path, limits=ImageSettings(max_total_pixels=700)) as store:
        cid = store.new_conversation("t", "m", None)
        commit(store, cid, "old", images=[red])  # 768 pixels
        commit(store, cid, "new", images=[blue])  # 600 pixels
        loaded = store.load_with_notes(cid)
    assert [m.text for m in loaded.conversation.messages] == ["new", "an answer"]
    assert "exceed the limit" in loaded.problems[0]


@pytest.mark.parametrize(
    "column, value",
    [
        ("parts", "not json"),
        ("parts", '[{"type": "image", "sha256": "../../../etc/passwd", "width": 1, "height": 1}]'),
        ("parts", "[]"),
        ("parts", "[" * 100_000),
        ("role", "root"),
        ("parts", b"\xff\xfe binary"),
    ],
)
def test_a_tampered_message_row_drops_its_turn_and_reading_the_records_still_works(store, column, value):
    cid = store.new_conversation("t", "m", None)
    commit(store, cid, "first")
    commit(store, cid, "second")
    with sqlite3.connect(store.path) as db:
        db.execute(f"UPDATE messages SET {column} = ? WHERE turn = 0 AND position = 0", (value,))
        db.execute("UPDATE turns SET usage = 'nope', images = '[1, \"../x\"]', created_at = 'x' WHERE idx = 0")
        db.execute("UPDATE steps SET arguments = 'nope'")
    loaded = store.load_with_notes(cid)
    assert [m.text for m in loaded.conversation.messages] == ["second", "an answer"]
    assert "turn 1" in loaded.problems[0]
    first = store.turns(cid)[0]
    assert (first.usage, first.images, first.prompt) == ({}, [], "first")


def test_image_path_takes_only_a_hash(store):
    with pytest.raises(StoreError):
        store.image_path("../../etc/passwd")
    assert store.image_path("a" * 64).parent == store.images_dir


# -- last.json ---------------------------------------------------------------------------------------------------


def test_the_last_json_conversation_is_imported_once_on_first_open(tmp_path, db_path):
    from vision_agent.core.messages import Conversation
    from vision_agent.history import save_last
    from vision_agent.paths import history_dir

    red = image_part(**RED)
    old = Conversation()
    old.add_turn([Message.user("\x1b[2Jwhat is this?", [red]), Message.assistant("a red square")])
    old.add_turn(
        [Message.user("sure?"), Message.assistant('{"tool": "x"}'), Message.user("obs"), Message.assistant("yes")]
    )
    save_last(old, history_dir())
    with Store.open(db_path) as store:
        [info] = store.list()
        assert (info.title, info.turns) == ("[2Jwhat is this?", 2)
        conversation = store.load(info.id)
        assert [m.text for m in conversation.messages] == [m.text for m in old.messages]
        assert conversation.turn_starts == [0, 2]
        assert conversation.messages[0].images[0].rgb == red.rgb
        assert [t.answer for t in store.turns(info.id)] == ["a red square", "yes"]
    with Store.open(db_path) as store:  # once: not again on the next open
        assert len(store.list()) == 1


def test_a_damaged_or_absent_last_json_does_not_stop_the_store(db_path):
    from vision_agent.paths import history_dir

    with Store.open(db_path) as store:  # none to import
        assert store.list() == []
    other = db_path.with_name("other.db")
    history_dir().mkdir(parents=True)
    (history_dir() / "last.json").write_text("{ damaged")
    with Store.open(other) as store:
        assert store.list() == []


# -- processes -------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from tests.helpers import image_part
    from vision_agent.core.messages import Message
    from vision_agent.sessions.store import StepRecord, Store, TurnRecord

    db, cid, name, go, loops = sys.argv[1:6]
    store = Store.open(Path(db))
    while not os.path.exists(go):
        time.sleep(0.005)
    image = image_part(size=(16, 16), color=(1, 2, 3))
    for n in range(int(loops)):
        prompt = f"question from {name} #{n}"
        steps = [StepRecord(tool="calculator", arguments={"expression": "1+1"}, ok=True, output="2")] * 3
        messages = [Message.user(prompt, [image])]
        messages += [Message.assistant("step"), Message.user("observation")] * 3 + [Message.assistant("answer")]
        record = TurnRecord(run_id=f"{name}-{n}", prompt=prompt, images=[image.sha256], answer=f"answer {name}",
                            status="ok", steps=steps, usage={"prompt_tokens": n})
        print(store.commit_turn(cid, record, messages).index, flush=True)
    store.close()
    """
)


def _writer(db: Path, cid: str, name: str, go: Path, loops: int, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg-data"), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), cid, name, str(go), str(loops)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_consistent(db: Path, cid: str) -> int:
    """Every turn whole: its 8 messages and 3 steps, indices 0..n-1, no orphan rows, SQLite and FTS intact."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.execute("INSERT INTO turns_fts (turns_fts) VALUES ('integrity-check')")
        indices = [i for (i,) in conn.execute("SELECT idx FROM turns WHERE conversation_id = ? ORDER BY idx", (cid,))]
        assert indices == list(range(len(indices)))
        for table, expected in (("messages", 8), ("steps", 3), ("turn_images", 1)):
            counts = conn.execute(
                f"SELECT t.idx, COUNT(x.turn) FROM turns t LEFT JOIN {table} x "
                "ON x.conversation_id = t.conversation_id AND x.turn = t.idx GROUP BY t.idx"
            ).fetchall()
            assert all(count == expected for _, count in counts), (table, counts)
            orphans = conn.execute(
                f"SELECT COUNT(*) FROM {table} x WHERE NOT EXISTS "
                "(SELECT 1 FROM turns t WHERE t.conversation_id = x.conversation_id AND t.idx = x.turn)"
            ).fetchone()
            assert orphans == (0,), table
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    return len(indices)


@pytest.mark.subprocess
@pytest.mark.timeout(240)
def test_twenty_processes_commit_to_one_conversation_at_once_and_no_turn_is_lost(tmp_path, db_path):
    with Store.open(db_path) as store:
        cid = store.new_conversation("shared", "m", None)
    go = tmp_path / "go"
    writers = [_writer(db_path, cid, f"p{n}", go, 1, tmp_path) for n in range(20)]
    time.sleep(2)  # most have opened the store by now; then all commit at once
    go.touch()
    outputs = [writer.communicate(timeout=200) for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * 20, [err for _, err in outputs if err][:1]
    assert sorted(int(out) for out, _ in outputs) == list(range(20))
    assert _assert_consistent(db_path, cid) == 20
    with Store.open(db_path) as store:
        assert sorted(t.run_id for t in store.turns(cid)) == sorted(f"p{n}-0" for n in range(20))
        assert len(store.load(cid).turn_starts) == 20
        assert len(list(store.images_dir.iterdir())) == 1


@pytest.mark.subprocess
@pytest.mark.timeout(240)
def test_a_writer_killed_mid_commit_leaves_no_half_turn(tmp_path, db_path):
    with Store.open(db_path) as store:
        cid = store.new_conversation("killed", "m", None)
    go = tmp_path / "go"
    go.touch()
    committed = 0
    for delay in (0.05, 0.13, 0.21):
        writers = [_writer(db_path, cid, f"k{n}", go, 100_000, tmp_path) for n in range(2)]
        # Once both are committing in a loop, a kill at an arbitrary moment lands inside a transaction.
        for writer in writers:
            assert writer.stdout.readline(), writer.stderr.read()
        time.sleep(delay)
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.communicate(timeout=30)
            assert writer.returncode == -signal.SIGKILL
        now = _assert_consistent(db_path, cid)
        assert now > committed
        committed = now
    with Store.open(db_path) as store:
        assert len(store.turns(cid)) == committed
        assert len(store.load(cid).turn_starts) == committed
        assert store.search("question")


def test_an_unwritable_images_folder_fails_the_commit_whole(store):
    cid = store.new_conversation("t", "m", None)
    store.images_dir.write_text("a file where the images folder should be")
    with pytest.raises(StoreError) as caught:
        commit(store, cid, "with an image", images=[image_part(**RED)])
    assert caught.value.exit_code == 14
    assert store.turns(cid) == [] and store.info(cid).turns == 0  # no half turn: nothing at all
    assert commit(store, cid, "without one").index == 0
