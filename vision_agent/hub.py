"""Downloads catalog models from the Hugging Face hub (honours HF_ENDPOINT, resumes partial files)."""

from __future__ import annotations

import fnmatch
import os
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
        f for f in files
        if fnmatch.fnmatch(f.lower(), pattern.lower()) and f.lower().startswith("mmproj") == projector
    )
    if not matches:
        raise DownloadError(f"{entry.repo} has no file matching {pattern!r} (the catalog may be out of date)")
    # For projectors prefer full precision, as llama.cpp's -hf does.
    preferred = [m for m in matches if "f16" in m.lower()] if projector else []
    return (preferred or matches)[0]


def download(entry: CatalogEntry, filename: str, directory: Path) -> Path:
    """Download one file into DIRECTORY with a progress bar on stderr, then verify its size."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    metadata = _hub_call(lambda: get_hf_file_metadata(hf_hub_url(entry.repo, filename)), entry, filename)
    path = Path(_hub_call(lambda: hf_hub_download(entry.repo, filename, local_dir=directory), entry, filename))
    actual = path.stat().st_size
    if metadata.size is not None and actual != metadata.size:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{filename}: downloaded {actual:,} bytes but the hub says {metadata.size:,}; removed, run pull again"
        )
    return path


def _hub_call(call, entry: CatalogEntry, filename: str = ""):
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    what = f"{entry.repo}/{filename}" if filename else entry.repo
    try:
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


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
