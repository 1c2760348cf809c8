"""`vision-agent doctor`: the llama.cpp build's capabilities, the model found, the effective settings.

A model problem (none found, a bad file, a mismatched pair) comes first, with what to do, before the details.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.config import Settings
    from vision_agent.errors import VisionAgentError


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    doctor_parser = commands.add_parser(
        "doctor", parents=[common, model], help="show the llama.cpp build, the model found and the settings"
    )
    doctor_parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return doctor(settings)


def doctor(settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line

    model_lines, problem = _model_report(settings)
    if problem is not None:
        print(f"problem: {safe_line(str(problem))}")
        print("(the details follow)\n")

    import llama_cpp

    from vision_agent.backends.llama_cpp import log as llama_log
    from vision_agent.catalog import models_dir

    llama_log.install()
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    print(f"llama-cpp-python  {llama_cpp.__version__}")
    print(f"GPU offload       {'yes' if offload else 'no'} (backend: {_backend_name(system_info, offload)})")
    print(f"system info       {system_info}")
    print(f"models dir        {models_dir(settings.model)}")
    for line in model_lines:
        print(line)

    from vision_agent.tooling import sandbox

    print("python sandbox")
    for layer in sandbox.layers():
        print(safe_line(f"  {'on ' if layer['active'] else 'OFF'}  {layer['name']:<20} {layer['detail']}"))
    wall = sandbox.os_wall_active()
    print(f"  OS wall holds without RestrictedPython: {'yes' if wall else 'no: the python tool asks before it runs'}")

    effective = settings.model_dump(mode="json")
    if effective["model"]["n_gpu_layers"] is None:
        effective["model"]["n_gpu_layers"] = f"auto ({'all' if offload else 0})"
    print("settings")
    print(json.dumps(effective, indent=2))
    sys.stdout.flush()
    return problem.exit_code if problem is not None else 0


def _model_report(settings: Settings) -> tuple[list[str], VisionAgentError | None]:
    """The lines about the model and its projector, and the problem found with them, if any."""
    from vision_agent.catalog import resolve_model
    from vision_agent.catalog.gguf_info import check_pair, read_summary
    from vision_agent.errors import VisionAgentError
    from vision_agent.frontends.terminal import safe_line

    lines: list[str] = []
    try:
        model = resolve_model(settings.model)
        if model.replay_script:
            lines.append(safe_line(f"model             {model.label} (scripted replay, no llama.cpp)"))
        else:
            text_path, mmproj_path = model.pair
            text, mmproj = read_summary(text_path), read_summary(mmproj_path)
            lines.append(
                safe_line(f"model             {text.path} ({text.architecture}, width {text.embedding_length})")
            )
            lines.append(
                safe_line(f"projector         {mmproj.path} ({mmproj.projector_type}, width {mmproj.projection_dim})")
            )
            check_pair(text, mmproj)
            lines.append(f"pair              ok; prompt format {model.chat_format} -> {text.template_family}")
    except VisionAgentError as exc:
        lines.append(f"model             problem: {safe_line(str(exc))}")
        return lines, exc
    return lines, None


def _backend_name(system_info: str, offload: bool) -> str:
    for name in ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL", "OpenCL", "Kompute"):
        if f"{name.upper()} =" in system_info.upper() or f"{name.upper()} :" in system_info.upper():
            return name
    return "GPU" if offload else "CPU"
