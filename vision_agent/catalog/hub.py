"""Downloads catalog models from the Hugging Face hub: honours HF_ENDPOINT and HF_TOKEN, resumes, verifies."""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from vision_agent.catalog import CatalogEntry
from vision_agent.errors import DownloadError


def resolve_filename(entry: CatalogEntry, pattern: str, *, projector: bool) -> str:
    """A catalog file name, or a glob resolved against the repository's file list."""
    if not any(ch in pattern for ch in "*?["):
        return pattern
    from huggingface_hub import list_repo_files

    files = _hub_call(lambda: list_repo_files(entry.repo), entry)
    matches = sorted(
        f for f in files if fnmatch.fnmatch(f.lower(), pattern.lower()) and f.lower().startswith("mmproj") == projector
    )
    if not matches:
        raise DownloadError(f"{entry.repo} has no file matching {pattern!r} (the catalog may be out of date)")
    # For projectors prefer full precision, as llama.cpp's -hf does.
    preferred = [m for m in matches if "f16" in m.lower()] if projector else []
    return (preferred or matches)[0]


def download(entry: CatalogEntry, filename: str, directory: Path) -> Path:
    """Download one file into DIRECTORY, resuming a previous partial download, then verify it.

    huggingface-hub 1.x/2.x restarts interrupted downloads from zero in a new process, so the
    transfer itself is ours: a `.part` file that the next `pull` continues with an HTTP Range request.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(entry.repo, filename)
    metadata = _hub_call(lambda: get_hf_file_metadata(url), entry, filename)
    final = directory / filename
    if final.is_file() and final.stat().st_size == metadata.size:
        print(f"{filename}: already downloaded", file=sys.stderr)
        return final
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{filename}.part"
    _fetch(metadata.location or url, part, metadata.size, filename)

    actual = part.stat().st_size
    if metadata.size is not None and actual != metadata.size:
        if actual > metadata.size:
            part.unlink()
            raise DownloadError(f"{filename}: received {actual:,} bytes but the hub says {metadata.size:,}; removed")
        raise DownloadError(f"{filename}: incomplete ({actual:,} of {metadata.size:,} bytes); run pull again to resume")
    expected_sha = (metadata.etag or "").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", expected_sha) and _sha256(part, filename) != expected_sha:
        part.unlink()
        raise DownloadError(f"{filename}: checksum mismatch (corrupt download); removed, run pull again")
    part.replace(final)
    return final


def _fetch(url: str, part: Path, size: int | None, label: str) -> None:
    import urllib.error
    import urllib.request

    from huggingface_hub.utils import build_hf_headers
    from tqdm import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset >= size:
        offset = 0  # stale or oversized partial file: start again
    headers = build_hf_headers()
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the range: rewrite from the start
            mode = "ab" if offset else "wb"
            with (
                part.open(mode) as out,
                tqdm(
                    total=size, initial=offset, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{label}: hub answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{label}: cannot reach the hub ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        have = part.stat().st_size if part.is_file() else 0
        raise DownloadError(
            f"{label}: download interrupted after {have:,} bytes ({exc or type(exc).__name__}); "
            "run pull again to resume"
        ) from None


def _sha256(path: Path, label: str) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    with (
        path.open("rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"verifying {label}",
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        while block := handle.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


class _RetryReporter(logging.Handler):
    """huggingface-hub logs each retry through its own stderr handler, and again through ours (the record
    propagates to the root logger): every line came twice, in its words. While a hub call runs, its records
    come here instead: one line per retry, with the reason; the final failure is our DownloadError alone."""

    _RETRY = re.compile(r"(?:Retrying in|Rate limited\. Waiting) ([\d.]+)s.*\[Retry (\d+)/(\d+)\]")
    _FAILED = re.compile(r"^(?:'(?P<error>.*)'|HTTP Error (?P<status>\d+)) thrown while requesting", re.S)

    def __init__(self):
        super().__init__(logging.INFO)
        self.reason = "the hub did not answer"

    def emit(self, record: logging.LogRecord) -> None:
        from vision_agent.frontends.terminal import safe_line

        message = record.getMessage()
        if failed := self._FAILED.match(message):
            status = failed.group("status")
            self.reason = (
                f"hub answered HTTP {status}"
                if status
                else f"cannot reach the hub ({_first_line(failed.group('error'))})"
            )
            self.reason = safe_line(self.reason)
        elif retry := self._RETRY.search(message):
            wait, attempt, attempts = retry.groups()
            print(f"vision-agent: {self.reason}; retry {attempt}/{attempts} in {float(wait):g} s", file=sys.stderr)
        elif record.levelno >= logging.WARNING:
            print(f"vision-agent: hub: {safe_line(message)}", file=sys.stderr)


@contextmanager
def _hub_messages():
    hub_logger = logging.getLogger("huggingface_hub")
    saved = hub_logger.handlers[:], hub_logger.propagate
    hub_logger.handlers[:] = [_RetryReporter()]
    hub_logger.propagate = False
    try:
        yield
    finally:
        hub_logger.handlers[:], hub_logger.propagate = saved


def _hub_call(call, entry: CatalogEntry, filename: str = ""):
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    what = f"{entry.repo}/{filename}" if filename else entry.repo
    try:
        with _hub_messages():
            return call()
    except EntryNotFoundError:
        raise DownloadError(f"{what}: no such file on the hub (the catalog may be out of date)") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{entry.repo}: no such repository on the hub, or it needs a token (HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{what}: hub error: {_first_line(exc)}") from None
    except OSError as exc:  # connection failures, disk full
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise DownloadError(f"{what}: download failed ({_first_line(exc)}); is {endpoint} reachable?") from None
    except Exception as exc:  # httpx transport errors are not OSError subclasses
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            raise DownloadError(f"{what}: cannot reach {endpoint} ({_first_line(exc)})") from None
        raise


def _first_line(exc: Exception | str) -> str:
    """The first line of an error from the hub (or whatever answers at HF_ENDPOINT), fit for a terminal."""
    from vision_agent.frontends.terminal import safe_line

    text = exc if isinstance(exc, str) else str(exc)
    return safe_line((text.strip().splitlines() or [type(exc).__name__])[0][:300])
