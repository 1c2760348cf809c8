"""How a tool's result enters the prompt: as delimited data that cannot pose as structure.

A result is untrusted text (search snippets, text read from images, a program's output). Between the
observation markers it must not be able to close the markers, start a forged turn (`USER:`, `ASSISTANT:`)
or a forged step (`Observation:`, `Answer:`). Exact-string checks are not enough: case, spaces,
zero-width characters and full-width or look-alike forms all read the same to a model. So each line is
compared after NFKC, case-folding and the removal of format characters, spacing and separators.
"""

from __future__ import annotations

import re
import unicodedata

from vision_agent.prompts import load_prompt

TRUNCATION_MARKER = "\n[… {n:,} characters truncated …]\n"
MARKER_REMOVED = "[marker removed]"
# A forged header line stays, behind this, so the model still reads the data but not as structure.
QUOTE = "> "

# Look-alikes of "<" and ">" that NFKC leaves alone.
_LEFT, _RIGHT = "‹«〈⟨〈❮❬ᐸ˂⋖⟪", "›»〉⟩〉❯❭ᐳ˃⋗⟫"
_ANGLES = str.maketrans(_LEFT + _RIGHT, "<" * len(_LEFT) + ">" * len(_RIGHT))
# Our markers (<<<TOOL_RESULT … TOOL_RESULT>>>) in skeleton form, with any number of angle brackets.
_MARKER = re.compile(r"<{2,}toolresult|toolresult>{2,}")
# Role and step headers that chat formats and our step format put at the start of a line.
_HEADERS = (
    "observation", "thought", "action", "input", "answer", "user", "assistant", "system", "human", "gpt",
    "model", "tool", "function", "instruction", "response", "###",
)  # fmt: skip
_HEADER = re.compile(r"^[#>*\s]*(?:" + "|".join(re.escape(h) for h in _HEADERS) + r")\s*:", re.I)
# Turn tags that chat formats also put in the middle of a line (Vicuna's "… ASSISTANT:", Mistral's "[/INST]").
_INLINE = re.compile(r"\[\s*/?\s*inst\s*\]|\b(?:user|assistant|system|observation)\s*:", re.I)


def skeleton(text: str) -> str:
    """`text` as a model would read it: NFKC, case-folded, without format characters, spaces or separators."""
    folded = unicodedata.normalize("NFKC", text).translate(_ANGLES).casefold()
    return "".join(ch for ch in folded if ch.isalnum() or ch in "<>#:")


def _header_form(line: str) -> str:
    """The line with format characters dropped and compatibility forms folded, spaces kept (for _HEADER)."""
    folded = unicodedata.normalize("NFKC", line).translate(_ANGLES)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


def defang(text: str) -> str:
    """A result that cannot close its own delimiters, nor open a turn or a step of its own."""
    lines = []
    for line in text.splitlines():  # every line break a model may read as one: \r, \x0b, \u2028, …
        form = _header_form(line)
        if _MARKER.search(skeleton(line)):
            line = MARKER_REMOVED
        elif _HEADER.match(form) or _INLINE.search(form):
            # Shown as the model would read it, behind a quote, with each turn tag bracketed as quoted text.
            line = QUOTE + _INLINE.sub(lambda m: f"‹{m.group()}›", form)
        lines.append(line)
    return "\n".join(lines)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """At most about `limit` characters, the head and the tail kept, with a marker saying how much went."""
    if len(text) <= limit:
        return text, False
    head = limit * 3 // 4
    tail = limit - head
    return text[:head] + TRUNCATION_MARKER.format(n=len(text) - head - tail) + text[-tail:], True


def observation(tool: str, ok: bool, result: str) -> str:
    return load_prompt("agent/observation.txt").format(tool=tool, status="ok" if ok else "error", result=defang(result))
