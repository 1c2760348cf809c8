"""Renders a conversation into the model's prompt text, with libmtmd's media marker where images go.

A GGUF's own `tokenizer.chat_template` is rendered exactly as llama-cpp-python's MTMDChatHandler
renders it (same Jinja environment and variables), so our prompts match llama.cpp's tools.
"""

from __future__ import annotations

from vision_agent.messages import ImagePart, Message
from vision_agent.prompts import chat_template


def choose_template(chat_format: str, gguf_template: str | None) -> str:
    """chat_format 'auto' uses the GGUF's template when it has one, else LLaVA-1.5's Vicuna format."""
    if chat_format in ("auto", "gguf") and gguf_template:
        return gguf_template
    if chat_format == "gguf":
        from vision_agent.errors import ConfigError

        raise ConfigError("chat format 'gguf' asked for, but the model file carries no chat template")
    return chat_template("vicuna" if chat_format == "auto" else chat_format)


def template_messages(messages: list[Message], media_marker: str) -> list[dict]:
    """Messages in the OpenAI-like shape templates expect; an image becomes a text part holding the marker."""
    rendered = []
    for message in messages:
        if message.role == "user":
            content = [
                {"type": "text", "text": media_marker if isinstance(part, ImagePart) else part.text}
                for part in message.parts
            ]
            rendered.append({"role": "user", "content": content})
        else:
            rendered.append({"role": message.role, "content": message.text})
    return rendered


def render_prompt(
    messages: list[Message],
    template: str,
    *,
    media_marker: str,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> str:
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = Jinja2ChatFormatter.tojson

    def raise_exception(message: str):
        raise ValueError(message)

    return env.from_string(template).render(
        messages=template_messages(messages, media_marker),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        media_marker=media_marker,
        raise_exception=raise_exception,
        functions=None,
        function_call=None,
        tools=None,
        tool_choice=None,
        strftime_now=Jinja2ChatFormatter.strftime_now,
    )
