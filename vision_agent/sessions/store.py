"""The conversation store every process shares: one SQLite file (WAL) and its images, each stored once by hash.

Layout: `<dir>/vision-agent.db` holds conversations, their turns (prompt, answer, status, usage), each turn's
messages (parts as JSON; an image part names its sha256), the tool steps, and an FTS5 index over prompts and
answers. The PNGs go to `<dir>/<db stem>-images/<sha256>.png` (written to a temporary name, then renamed), so a
screenshot asked about ten times is stored once, and two stores in one folder never delete each other's images.

Several processes (a TUI, a watcher, scripts, twenty `ask -c` at once) write to one store: every write is one
`BEGIN IMMEDIATE` transaction (the writers queue on SQLite's lock, up to a busy timeout), so a turn is stored
whole or not at all, even when the process is killed in the middle. What is read back is untrusted like any
file: the schema version is checked (a newer one is refused, never "migrated" down), SQLite's own errors on a
damaged or foreign file become StoreError (exit 14), and `load` validates every turn as history.py does for
last.json: a turn whose image file is missing or was replaced, or whose row was tampered with, is left out with
a note.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from vision_agent.config import ImageSettings
from vision_agent.core.messages import Conversation, ImagePart, Message
from vision_agent.errors import ConfigError, StoreError, VisionAgentError
from vision_agent.files import display_name
from vision_agent.history import ImageBudget, Loaded, first_problem, stored_message, write_atomic
from vision_agent.sessions.records import (
    INFO_QUERY,
    STATUSES,
    ConversationInfo,
    ConversationNotFound,
    SearchHit,
    StepRecord,
    TurnRecord,
    column_text,
    dump_json,
    info_from_row,
    load_json,
    make_title,
    not_found,
    optional_text,
    stored_part,
)
from vision_agent.sessions.schema import MIGRATIONS, SCHEMA_VERSION
from vision_agent.text import valid_text

log = logging.getLogger(__name__)

DB_NAME = "vision-agent.db"
BUSY_TIMEOUT_S = 10.0
MAX_SEARCH_WORDS = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONVERSATION_ID = re.compile(r"^[0-9a-f]{32}$")


class Store:
    def __init__(self, connection: sqlite3.Connection, path: Path, limits: ImageSettings, busy_timeout_s: float):
        self._db: sqlite3.Connection | None = connection  # None once closed
        self.path = path
        self.images_dir = path.with_name(f"{path.stem}-images")
        self.limits = limits
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()  # one connection, shared by a session's threads

    # -- opening --------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path | None = None,
        *,
        limits: ImageSettings | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        history: Path | None = None,
    ) -> Store:
        """The store at `path` (None: paths.data_dir()/vision-agent.db), created and migrated as needed.

        On the first open of a new store the last.json conversation in `history` (None: paths.history_dir())
        is imported once. Raises StoreError (exit 14) for a file that is not a usable store."""
        from vision_agent.paths import data_dir, history_dir

        path = Path(path) if path is not None else data_dir() / DB_NAME
        _check_files(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"the conversation store {display_name(path)}: cannot create its folder ({exc.strerror or exc})"
            ) from None
        try:
            connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _store_error(exc, path, busy_timeout_s) from None
        store = cls(connection, path, limits or ImageSettings(), busy_timeout_s)
        try:
            with store._use() as db:
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable across a killed process
                db.execute("PRAGMA journal_mode = WAL")
                store._migrate(db)
            store._import_history_once(history or history_dir())
        except BaseException:
            store.close()
            raise
        return store

    def _migrate(self, db: sqlite3.Connection) -> None:
        if self._version(db) == SCHEMA_VERSION:
            return
        with self._transaction(db):
            version = self._version(db)  # again under the write lock: another process may have just migrated
            if version == 0:
                foreign = {
                    name
                    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    if not name.startswith("sqlite_")
                }
                if foreign:
                    raise StoreError(
                        f"the conversation store {display_name(self.path)} is a SQLite database of something else "
                        f"(tables {', '.join(sorted(foreign)[:3])}); set store.path to another file"
                    )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self, db: sqlite3.Connection) -> int:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the conversation store {display_name(self.path)} was written by a newer vision-agent (schema "
                f"{version}; this one knows up to {SCHEMA_VERSION}): upgrade, or set store.path to another file"
            )
        if version < 0:
            raise StoreError(f"the conversation store {display_name(self.path)} is damaged (schema {version})")
        return version

    def _import_history_once(self, history: Path) -> None:
        """last.json (the one conversation kept before this store) becomes a conversation, on the first open."""
        from vision_agent.history import load_last

        with self._use() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'history_imported'").fetchone():
                return
        # Every turn is imported: the pixel budget applies when a conversation is loaded for a run, not here.
        limits = self.limits.model_copy(update={"max_total_pixels": 2**62})
        try:
            loaded = load_last(history, limits=limits)
            outcome, problems = "imported", loaded.problems
        except ConfigError:  # nothing to import
            loaded, outcome, problems = None, "none", []
        except VisionAgentError as exc:  # damaged beyond use (StoreError)
            loaded, outcome, problems = None, "none", [str(exc)]
        for problem in problems:  # the user sees what of their old conversation could not come along
            log.warning("importing %s: %s", display_name(history / "last.json"), problem)
        files = {}
        if loaded is not None:
            files = self._missing_files(loaded.conversation.images)
        with self._use() as db, self._transaction(db):
            if db.execute("SELECT 1 FROM meta WHERE key = 'history_imported'").fetchone():
                return  # another process imported it meanwhile
            if loaded is not None and loaded.conversation.messages:
                self._import(db, loaded.conversation, files)
            db.execute("INSERT INTO meta (key, value) VALUES ('history_imported', ?)", (outcome,))

    def _import(self, db: sqlite3.Connection, conversation: Conversation, files: dict[str, bytes]) -> None:
        now = time.time()
        messages = conversation.messages
        starts = conversation.turn_boundaries() or [0]
        turns = [messages[a:b] for a, b in zip(starts, [*starts[1:], len(messages)], strict=True)]
        first = next((m.text for turn in turns for m in turn if m.role == "user"), "")
        conversation_id = uuid.uuid4().hex
        db.execute(
            "INSERT INTO conversations (id, title, model, mmproj, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (conversation_id, make_title(first) or "imported conversation", "(imported)", None, now, now),
        )
        for index, turn in enumerate(turns):
            user = next((m for m in turn if m.role == "user"), turn[0])
            last = turn[-1]
            record = TurnRecord(
                run_id=uuid.uuid4().hex,
                prompt=user.text,
                images=[image.sha256 for image in user.images],
                answer=last.text if last.role == "assistant" else "",
                status="ok",
                steps=[],
                usage={},
            )
            self._insert_turn(db, conversation_id, index, record, turn, now, files)

    # -- writing --------------------------------------------------------------------------------------------

    def new_conversation(self, title: str, model: str, mmproj: str | None, conversation_id: str | None = None) -> str:
        """A new, empty conversation; its id is a new uuid (hex) unless the caller chose one of that shape."""
        if conversation_id is None:
            conversation_id = uuid.uuid4().hex
        elif not _CONVERSATION_ID.match(conversation_id):
            raise ConfigError(f"a conversation id must be 32 lowercase hex digits, not {make_title(conversation_id)!r}")
        now = time.time()
        with self._use() as db, self._transaction(db):
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone():
                raise ConfigError(f"a conversation with the id {conversation_id} exists already")
            db.execute(
                "INSERT INTO conversations (id, title, model, mmproj, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, make_title(title), valid_text(model), optional_text(mmproj), now, now),
            )
        return conversation_id

    def commit_turn(self, conversation_id: str, turn: TurnRecord, messages: list[Message]) -> TurnRecord:
        """Append the turn (its record, messages, steps and new images) in one transaction; the record comes back
        with its index and created_at. A conversation without a title takes it from this prompt."""
        if turn.status not in STATUSES:
            raise ValueError(f"unknown turn status {turn.status!r}")
        images = [image for message in messages for image in message.images]
        files = self._missing_files(images)  # encoded before the lock is taken: PNG encoding is the slow part
        now = time.time()
        with self._use() as db, self._transaction(db):
            row = db.execute("SELECT title FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise not_found(conversation_id)
            (index,) = db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            self._insert_turn(db, conversation_id, index, turn, messages, now, files)
            title = row[0] or make_title(turn.prompt)
            db.execute(
                "UPDATE conversations SET updated_at = MAX(updated_at, ?), title = ? WHERE id = ?",
                (now, title, conversation_id),
            )
        return dataclasses.replace(turn, index=index, created_at=now)

    def _insert_turn(
        self,
        db: sqlite3.Connection,
        conversation_id: str,
        index: int,
        turn: TurnRecord,
        messages: list[Message],
        now: float,
        files: dict[str, bytes],
    ) -> None:
        db.execute(
            "INSERT INTO turns (conversation_id, idx, run_id, prompt, answer, status, error, usage, images, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation_id,
                index,
                valid_text(turn.run_id),
                valid_text(turn.prompt),
                valid_text(turn.answer),
                turn.status,
                optional_text(turn.error),
                dump_json(turn.usage),
                dump_json([sha for sha in turn.images if _SHA256.match(sha)]),
                now,
            ),
        )
        used: set[str] = {sha for sha in turn.images if _SHA256.match(sha)}
        for position, message in enumerate(messages):
            parts = [stored_part(part) for part in message.parts]
            db.execute(
                "INSERT INTO messages (conversation_id, turn, position, role, parts) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, index, position, message.role, dump_json(parts)),
            )
            for image in message.images:
                self._store_image(db, image, files)
                used.add(image.sha256)
        for position, step in enumerate(turn.steps):
            db.execute(
                "INSERT INTO steps (conversation_id, turn, position, tool, arguments, ok, output) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    index,
                    position,
                    valid_text(step.tool),
                    dump_json(step.arguments),
                    None if step.ok is None else int(step.ok),
                    valid_text(step.output),
                ),
            )
        db.executemany(
            "INSERT INTO turn_images (conversation_id, turn, sha256) VALUES (?, ?, ?)",
            [(conversation_id, index, sha) for sha in sorted(used)],
        )

    def _missing_files(self, images: list[ImagePart]) -> dict[str, bytes]:
        """PNG bytes of the images that have no file yet."""
        from vision_agent.core.images import encode_png

        try:
            return {
                image.sha256: encode_png(image)
                for image in {image.sha256: image for image in images}.values()
                if not self.image_path(image.sha256).is_file()
            }
        except OSError as exc:  # the images folder unreadable, say
            raise StoreError(
                f"the conversation store cannot reach its images in {display_name(self.images_dir)}: "
                f"{exc.strerror or exc}"
            ) from None

    def _store_image(self, db: sqlite3.Connection, image: ImagePart, files: dict[str, bytes]) -> None:
        """The image's file and row. Under the write lock, so that a concurrent delete cannot remove the file of
        an image this turn is about to use."""
        from vision_agent.core.images import encode_png

        path = self.image_path(image.sha256)
        try:
            if not path.is_file():
                data = files.get(image.sha256) or encode_png(image)
                self.images_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError(
                f"the conversation store cannot write the image {display_name(path)}: {exc.strerror or exc}"
            ) from None
        db.execute(
            "INSERT OR IGNORE INTO images (sha256, width, height, bytes) VALUES (?, ?, ?, ?)",
            (image.sha256, image.width, image.height, size),
        )

    def rename(self, conversation_id: str, title: str) -> None:
        title = make_title(title)
        if not title:
            raise ConfigError("a conversation's title needs some visible text")
        with self._use() as db, self._transaction(db):
            if db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)).rowcount == 0:
                raise not_found(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """The conversation, its turns, and the image files no other conversation uses."""
        with self._use() as db, self._transaction(db):
            shas = [
                sha
                for (sha,) in db.execute(
                    "SELECT DISTINCT sha256 FROM turn_images WHERE conversation_id = ?", (conversation_id,)
                )
            ]
            if db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount == 0:
                raise not_found(conversation_id)
            # The turns' rows go by cascade (and the turns' FTS entries by trigger).
            unused = [
                sha
                for sha in shas
                if not db.execute("SELECT 1 FROM turn_images WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()
            ]
            db.executemany("DELETE FROM images WHERE sha256 = ?", [(sha,) for sha in unused])
            # Still under the write lock: a turn committed after this sees the file gone and writes it again.
            for sha in unused:
                with contextlib.suppress(OSError):
                    self.image_path(sha).unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------------------------

    def latest(self) -> str | None:
        with self._use() as db:
            row = db.execute("SELECT id FROM conversations ORDER BY updated_at DESC, rowid DESC LIMIT 1").fetchone()
        return None if row is None else column_text(row[0])

    def resolve(self, ref: str) -> str:
        """A conversation id from an id, a unique id prefix (4 characters or more) or a unique title prefix
        (case-insensitive; an exact title wins over longer ones)."""
        with self._use() as db:
            rows = [
                (column_text(i), make_title(column_text(t)))
                for i, t in db.execute("SELECT id, title FROM conversations")
            ]
        if any(cid == ref for cid, _ in rows):
            return ref
        matches = [(cid, title) for cid, title in rows if len(ref) >= 4 and cid.startswith(ref.lower())]
        if not matches and ref.strip():
            wanted = ref.strip().casefold()
            matches = [(cid, title) for cid, title in rows if title.casefold() == wanted]
            matches = matches or [(cid, title) for cid, title in rows if title.casefold().startswith(wanted)]
        if len(matches) == 1:
            return matches[0][0]
        shown = make_title(ref) or repr(ref)
        if not matches:
            raise ConversationNotFound(
                f"no conversation matches '{shown}' (give an id, 4 or more of its first characters, or the start "
                "of a title; `conversations list` shows them)"
            )
        listed = ", ".join(f"{cid[:8]} '{title}'" for cid, title in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise ConversationNotFound(f"'{shown}' matches {len(matches)} conversations: {listed}{more}; say which")

    def info(self, conversation_id: str) -> ConversationInfo:
        with self._use() as db:
            row = db.execute(INFO_QUERY + " WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise not_found(conversation_id)
        return info_from_row(row)

    def turns(self, conversation_id: str) -> list[TurnRecord]:
        """Every turn as recorded, failed and cancelled ones too; damaged values read as empty."""
        with self._use() as db, self._snapshot(db):
            if not db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone():
                raise not_found(conversation_id)
            steps: dict[int, list[StepRecord]] = {}
            for turn, tool, arguments, ok, output in db.execute(
                "SELECT turn, tool, arguments, ok, output FROM steps WHERE conversation_id = ? ORDER BY turn, position",
                (conversation_id,),
            ):
                arguments = load_json(arguments)
                steps.setdefault(turn, []).append(
                    StepRecord(
                        tool=column_text(tool),
                        arguments=arguments if isinstance(arguments, dict) else {},
                        ok=None if ok is None else bool(ok),
                        output=column_text(output),
                    )
                )
            rows = db.execute(
                "SELECT idx, run_id, prompt, answer, status, error, usage, images, created_at FROM turns "
                "WHERE conversation_id = ? ORDER BY idx",
                (conversation_id,),
            ).fetchall()
        records = []
        for idx, run_id, prompt, answer, status, error, usage, images, created_at in rows:
            usage, images = load_json(usage), load_json(images)
            records.append(
                TurnRecord(
                    run_id=column_text(run_id),
                    prompt=column_text(prompt),
                    images=[s for s in images if isinstance(s, str) and _SHA256.match(s)]
                    if isinstance(images, list)
                    else [],
                    answer=column_text(answer),
                    status=column_text(status) if status in STATUSES else "error",
                    steps=steps.get(idx, []),
                    usage=usage if isinstance(usage, dict) else {},
                    error=None if error is None else column_text(error),
                    created_at=created_at if isinstance(created_at, float | int) else 0.0,
                    index=idx if isinstance(idx, int) else -1,
                )
            )
        return records

    def load(self, conversation_id: str) -> Conversation:
        """The conversation as the model's context; a damaged turn is left out (logged: `load_with_notes` gives
        the notes to show)."""
        loaded = self.load_with_notes(conversation_id)
        for note in loaded.problems:
            log.warning("%s", note)
        return loaded.conversation

    def load_with_notes(self, conversation_id: str) -> Loaded:
        """The answered turns (status ok or max_steps: the others are records, not context), each validated like
        history.py validates last.json: messages' shape, and each image against its file (size, hash, pixel
        budgets, the newest turns kept first). Damaged turns are left out, each with a note in `problems`;
        StoreError when no turn is usable."""
        with self._use() as db:
            if not db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone():
                raise not_found(conversation_id)
            rows = db.execute(
                "SELECT t.idx, m.position, m.role, m.parts FROM turns t LEFT JOIN messages m "
                "ON m.conversation_id = t.conversation_id AND m.turn = t.idx "
                "WHERE t.conversation_id = ? AND t.status IN ('ok', 'max_steps') ORDER BY t.idx, m.position",
                (conversation_id,),
            ).fetchall()
        turns: dict[int, list[tuple]] = {}
        for idx, _position, role, parts in rows:
            turns.setdefault(idx, [])
            if role is not None or parts is not None:
                turns[idx].append((role, parts))
        budget = ImageBudget(self.limits)
        cache: dict[str, ImagePart | str] = {}
        rebuilt: dict[int, list[Message]] = {}
        problems: list[str] = []
        for idx in sorted(turns, reverse=True):  # newest first: past the pixel budget, the oldest go
            try:
                if not turns[idx]:
                    raise ValueError("no messages")
                rebuilt[idx] = [
                    stored_message({"role": role, "parts": load_json(parts)}, self.images_dir, budget, cache)
                    for role, parts in turns[idx]
                ]
            except (ValidationError, ValueError, TypeError, VisionAgentError) as exc:
                problems.append(f"turn {idx + 1}: {first_problem(exc)}")
        conversation = Conversation()
        for idx in sorted(rebuilt):
            conversation.add_turn(rebuilt[idx])
        if problems and not rebuilt:
            raise StoreError(
                f"conversation {conversation_id[:8]}: none of its {len(turns)} turns can be loaded "
                f"({problems[-1]}); start a new one"
            )
        notes = []
        if problems:
            problems.reverse()
            notes.append(
                f"conversation {conversation_id[:8]}: {len(problems)} damaged turn(s) left out ({problems[0]}"
                + (f"; and {len(problems) - 1} more)" if len(problems) > 1 else ")")
            )
        return Loaded(conversation, notes)

    def image_path(self, sha256: str) -> Path:
        """Where the image's PNG is (or goes); only a sha256 in lower-case hex names a file."""
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise StoreError(f"not an image hash: {sha256!r:.80}")
        return self.images_dir / f"{sha256}.png"

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Turns whose prompt or answer holds every word of `text` (best matches first). The text is words, never
        FTS syntax: each word is quoted, so `"`, `AND`, `NEAR(` or `prompt:` are searched for, not obeyed."""
        words = re.findall(r"\w+", valid_text(text))[:MAX_SEARCH_WORDS]
        if not words:
            return []
        query = " ".join(f'"{word}"' for word in words)  # \w has no quote: nothing to escape
        with self._use() as db:
            rows = db.execute(
                "SELECT t.conversation_id, c.title, t.idx, snippet(turns_fts, -1, '[', ']', '…', 12) "
                "FROM turns_fts JOIN turns t ON t.id = turns_fts.rowid "
                "JOIN conversations c ON c.id = t.conversation_id "
                "WHERE turns_fts MATCH ? ORDER BY rank LIMIT ?",
                (query, max(0, limit)),
            ).fetchall()
        return [
            SearchHit(column_text(cid), column_text(title), idx, column_text(snippet))
            for cid, title, idx, snippet in rows
        ]

    def list(self, limit: int | None = None) -> builtins.list[ConversationInfo]:  # `list` is this method here
        """Newest (last updated) first."""
        query = INFO_QUERY + " ORDER BY c.updated_at DESC, c.rowid DESC"
        with self._use() as db:
            rows = db.execute(query + " LIMIT ?", (-1 if limit is None else max(0, limit),)).fetchall()
        return [info_from_row(row) for row in rows]

    # -- the connection -------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The connection, for this thread alone; SQLite's errors become StoreError with one line."""
        with self._lock:
            if self._db is None:
                raise StoreError("the conversation store is closed")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise _store_error(exc, self.path, self.busy_timeout_s) from None

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """A write transaction: IMMEDIATE takes the write lock at once (waiting up to the busy timeout), so two
        writers never deadlock upgrading from read to write."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _snapshot(self, db: sqlite3.Connection) -> Iterator[None]:
        """Several reads that see one state of the store."""
        db.execute("BEGIN")
        try:
            yield
        finally:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("COMMIT")


def _check_files(path: Path) -> None:
    """Refuse, before SQLite opens them, a store or journal that is not a regular file: a FIFO would hang the
    open or the first read, /dev/zero never ends, and a directory or unreadable file has no useful error."""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            mode = os.stat(candidate).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(
                f"the conversation store {display_name(candidate)}: cannot access ({exc.strerror or exc})"
            ) from None
        if not stat.S_ISREG(mode):
            raise StoreError(f"the conversation store {display_name(candidate)}: not a regular file")
        # Another process may delete its journal between the two looks (the last connection to close removes the
        # WAL): only a file that is still there and refuses us is an error.
        if not os.access(candidate, os.R_OK | os.W_OK) and os.path.lexists(candidate):
            raise StoreError(f"the conversation store {display_name(candidate)}: not readable and writable")


def _store_error(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> StoreError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    name = display_name(path)
    if "locked" in text or "busy" in text:
        return StoreError(
            f"the conversation store {name} is busy: another process held it for over {busy_timeout_s:g} s; try again"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("disk" in text and "full" in text or "readonly" in text):
        return StoreError(f"the conversation store {name} cannot be written ({text})")
    return StoreError(
        f"the conversation store {name} is damaged or not a store ({text}); move it aside to start a new one"
    )
