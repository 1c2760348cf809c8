"""Errors a user can cause, each with a one-line message and its own exit code.

The codes are part of the command-line interface and are documented in README.md.
"""

from __future__ import annotations


class VisionAgentError(Exception):
    """An expected failure: printed as one line, never as a traceback."""

    exit_code = 1
    kind = "error"


class ConfigError(VisionAgentError):
    exit_code = 2
    kind = "config"


class NoModelError(VisionAgentError):
    exit_code = 3
    kind = "no_model"


class ModelFileError(VisionAgentError):
    """A model or projector file is missing, unreadable, not GGUF, or corrupt."""

    exit_code = 4
    kind = "model_file"


class ModelMismatchError(VisionAgentError):
    """The text model and the projector do not belong together."""

    exit_code = 5
    kind = "model_mismatch"


class ImageNotFoundError(VisionAgentError):
    exit_code = 6
    kind = "image_not_found"


class ImageDecodeError(VisionAgentError):
    """Not an image, or a corrupt one."""

    exit_code = 7
    kind = "image_corrupt"


class ImageTooLargeError(VisionAgentError):
    """Too many pixels or bytes: refused before decoding (decompression bombs)."""

    exit_code = 8
    kind = "image_too_large"


class ContextOverflowError(VisionAgentError):
    exit_code = 9
    kind = "context_overflow"


class DownloadError(VisionAgentError):
    exit_code = 10
    kind = "download"


class BackendError(VisionAgentError):
    """llama.cpp refused or failed at run time."""

    exit_code = 11
    kind = "backend"


class ToolError(VisionAgentError):
    """A tool refused its input or failed; in the agent loop this becomes an observation, not an exit."""

    exit_code = 12
    kind = "tool"


class StepFormatError(VisionAgentError):
    """The model kept answering outside the agent's step format (only possible without a grammar)."""

    exit_code = 13
    kind = "step_format"


class StoreError(VisionAgentError):
    """The saved conversation cannot be read or written (damaged beyond use, unwritable data dir)."""

    exit_code = 14
    kind = "store"


EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), or cancelled
EXIT_HANGUP = 129  # SIGHUP: the terminal went away
EXIT_TERMINATED = 143  # SIGTERM
