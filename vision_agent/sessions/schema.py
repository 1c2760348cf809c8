"""The conversation store's schema: migrations counted by PRAGMA user_version (see store.py)."""

from __future__ import annotations

# Each migration is a list of statements run in one transaction; user_version counts the ones applied.
# (executescript would commit the open transaction first, so the statements are run one by one.)
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY, title TEXT NOT NULL, model TEXT NOT NULL, mmproj TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
        "CREATE INDEX conversations_updated ON conversations (updated_at)",
        # An explicit integer key: FTS5 points at it, and VACUUM may renumber an implicit rowid.
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, run_id TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
            status TEXT NOT NULL, error TEXT, usage TEXT NOT NULL, images TEXT NOT NULL, created_at REAL NOT NULL,
            UNIQUE (conversation_id, idx))""",
        """CREATE TABLE messages (
            conversation_id TEXT NOT NULL, turn INTEGER NOT NULL, position INTEGER NOT NULL,
            role TEXT NOT NULL, parts TEXT NOT NULL,
            PRIMARY KEY (conversation_id, turn, position),
            FOREIGN KEY (conversation_id, turn) REFERENCES turns (conversation_id, idx) ON DELETE CASCADE)""",
        """CREATE TABLE steps (
            conversation_id TEXT NOT NULL, turn INTEGER NOT NULL, position INTEGER NOT NULL,
            tool TEXT NOT NULL, arguments TEXT NOT NULL, ok INTEGER, output TEXT NOT NULL,
            PRIMARY KEY (conversation_id, turn, position),
            FOREIGN KEY (conversation_id, turn) REFERENCES turns (conversation_id, idx) ON DELETE CASCADE)""",
        """CREATE TABLE images (
            sha256 TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL, bytes INTEGER NOT NULL)""",
        # Which turns use which image: an image is deleted with the last conversation that uses it.
        """CREATE TABLE turn_images (
            conversation_id TEXT NOT NULL, turn INTEGER NOT NULL, sha256 TEXT NOT NULL,
            PRIMARY KEY (conversation_id, turn, sha256),
            FOREIGN KEY (conversation_id, turn) REFERENCES turns (conversation_id, idx) ON DELETE CASCADE)""",
        "CREATE INDEX turn_images_sha ON turn_images (sha256)",
        """CREATE VIRTUAL TABLE turns_fts USING fts5 (
            prompt, answer, content='turns', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN
            INSERT INTO turns_fts (rowid, prompt, answer) VALUES (new.id, new.prompt, new.answer); END""",
        """CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, prompt, answer) VALUES ('delete', old.id, old.prompt, old.answer);
            END""",
        """CREATE TRIGGER turns_fts_update AFTER UPDATE OF prompt, answer ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, prompt, answer) VALUES ('delete', old.id, old.prompt, old.answer);
            INSERT INTO turns_fts (rowid, prompt, answer) VALUES (new.id, new.prompt, new.answer); END""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
OUR_TABLES = {"meta", "conversations", "turns", "messages", "steps", "images", "turn_images", "turns_fts"}
