"""Builds the backend a resolved model needs."""

from __future__ import annotations

from vision_agent.backends.base import Backend
from vision_agent.catalog import ResolvedModel
from vision_agent.config import ModelSettings


def make_backend(model: ResolvedModel, settings: ModelSettings) -> Backend:
    if model.replay_script is not None:
        from vision_agent.backends.replay import ReplayBackend

        return ReplayBackend.from_file(model.replay_script)
    from vision_agent.backends.llama_cpp.backend import LlamaCppBackend

    return LlamaCppBackend(model, settings)
