"""Image embeddings on disk, shared by every process: a follow-up in a new process (`ask -c`, a watcher
restarted, a script) does not encode the conversation's images again.

One file per (projector, image): `<cache>/embeddings/<projector sha256>/<image sha256>-<positions>.emb`, a
fixed header then the float32 embedding. The projector is named by the sha256 of its bytes (memoised by
file identity, so a 600 MB projector is hashed once, not at every start): a replaced projector can never
get another's embeddings. Files are written whole (temporary file + rename), so several processes may
write at once. They are still untrusted: a truncated, foreign or tampered file (header, projector, image,
size) is removed and the image encoded again; no error of this cache ever fails a request. The folder is
bounded by `model.embedding_cache_mb`: the least recently used files go first (a hit refreshes the mtime).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from vision_agent.backends.llama_cpp.disk_files import (
    evict_lru,
    file_sha256,
    is_sha256,
    read_regular,
    remove,
    touch,
    write_atomic,
)

log = logging.getLogger(__name__)

MAGIC = b"VAEMB001"  # the last digits are the format's version
# magic, projector sha256, image sha256, positions, tokens, embedding width
HEADER = struct.Struct("<8s32s32sIII")
SUFFIX = ".emb"


class DiskEmbeddings:
    def __init__(self, root: Path, projector: Path, max_bytes: int, memo: Path | None = None):
        """`memo`: where file hashes are remembered (default: a folder in `root`)."""
        self.root = root
        self.max_bytes = max_bytes
        self.projector_sha = file_sha256(projector, memo or root / "projectors")
        self.folder = root / self.projector_sha

    def get(self, image_sha: str, n_pos: int, n_tokens: int, n_embd: int):
        """The stored embedding (a float32 numpy array of n_tokens * n_embd), or None."""
        import numpy as np

        path = self._path(image_sha, n_pos)
        if path is None:
            return None
        expected = HEADER.size + n_tokens * n_embd * 4
        try:
            data = read_regular(path, expected)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("embedding cache: %s unreadable (%s)", path.name, exc)
            remove(path)
            return None
        header = (MAGIC, bytes.fromhex(self.projector_sha), bytes.fromhex(image_sha), n_pos, n_tokens, n_embd)
        if data is None or len(data) != expected or HEADER.unpack_from(data) != header:
            log.debug("embedding cache: %s does not match; removed", path.name)
            remove(path)
            return None
        embedding = np.frombuffer(data, dtype="<f4", offset=HEADER.size).astype(np.float32, copy=True)
        if not np.isfinite(embedding).all():  # written by nothing of ours
            remove(path)
            return None
        touch(path)  # recently used: kept longest
        return embedding

    def put(self, image_sha: str, n_pos: int, n_tokens: int, n_embd: int, embedding) -> None:
        path = self._path(image_sha, n_pos)
        size = HEADER.size + n_tokens * n_embd * 4
        if path is None or size > self.max_bytes:
            return
        header = HEADER.pack(
            MAGIC, bytes.fromhex(self.projector_sha), bytes.fromhex(image_sha), n_pos, n_tokens, n_embd
        )
        payload = embedding.astype("<f4", copy=False).tobytes()
        if len(payload) != n_tokens * n_embd * 4:
            return
        # A full disk or an unwritable cache: the answer does not depend on it.
        if not write_atomic(path, [header, payload]):
            log.debug("embedding cache: could not write %s", path.name)
            return
        self._evict()

    def _path(self, image_sha: str, n_pos: int) -> Path | None:
        if not is_sha256(image_sha):  # only our own hashes name files
            return None
        return self.folder / f"{image_sha}-{n_pos}{SUFFIX}"

    def _evict(self) -> None:
        """Least recently used first, across every projector's folder, until the total fits."""
        try:
            folders = [folder for folder in self.root.iterdir() if is_sha256(folder.name)]
        except OSError:
            return
        evict_lru(folders, SUFFIX, self.max_bytes)
