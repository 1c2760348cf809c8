"""`vision-agent doctor`: the llama.cpp build's capabilities, the model found, the effective settings."""

from __future__ import annotations

import json
import sys

from vision_agent.config import Settings
from vision_agent.errors import VisionAgentError
from vision_agent.terminal import safe_line


def doctor(settings: Settings) -> int:
    import llama_cpp

    from vision_agent.backends import llama_log
    from vision_agent.catalog import models_dir, resolve_model
    from vision_agent.gguf_info import check_pair, read_summary

    llama_log.install()
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    print(f"llama-cpp-python  {llama_cpp.__version__}")
    print(f"GPU offload       {'yes' if offload else 'no'} (backend: {_backend_name(system_info, offload)})")
    print(f"system info       {system_info}")
    print(f"models dir        {models_dir(settings.model)}")

    exit_code = 0
    try:
        model = resolve_model(settings.model)
        if model.replay_script:
            print(safe_line(f"model             {model.label} (scripted replay, no llama.cpp)"))
        else:
            text, mmproj = read_summary(model.text), read_summary(model.mmproj)
            print(safe_line(f"model             {text.path} ({text.architecture}, width {text.embedding_length})"))
            print(
                safe_line(f"projector         {mmproj.path} ({mmproj.projector_type}, width {mmproj.projection_dim})")
            )
            check_pair(text, mmproj)
            print(f"pair              ok; prompt format {model.chat_format} -> {text.template_family}")
    except VisionAgentError as exc:
        print(f"model             problem: {safe_line(str(exc))}")
        exit_code = exc.exit_code

    from vision_agent import sandbox

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
    return exit_code


def _backend_name(system_info: str, offload: bool) -> str:
    for name in ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL", "OpenCL", "Kompute"):
        if f"{name.upper()} =" in system_info.upper() or f"{name.upper()} :" in system_info.upper():
            return name
    return "GPU" if offload else "CPU"
