"""How a tool's result enters the prompt: as delimited data that cannot pose as structure.

A result is untrusted text (search snippets, text read from images, a program's output). Between the
observation markers it must not be able to close the markers, start a forged turn (`USER:`, `ASSISTANT:`)
or a forged step (`Observation:`, `Answer:`). Exact-string checks are not enough: case, spaces,
zero-width characters, full-width forms, letters of other scripts that look Latin, look-alike colons and
brackets, HTML entities and combining marks all read the same to a model. So each line is compared after
NFKC, entity decoding, look-alike folding, case-folding and the removal of format characters, combining
marks, spacing and separators.
"""

from __future__ import annotations

import html
import re
import unicodedata

from vision_agent.core.prompts import load_prompt

TRUNCATION_MARKER = "\n[… {n:,} characters truncated …]\n"
MARKER_REMOVED = "[marker removed]"
# A forged header line stays, behind this, so the model still reads the data but not as structure.
QUOTE = "> "

# Look-alikes that NFKC leaves alone: of "<" and ">" (doubled and tripled ones too), of ":", and the Cyrillic,
# Greek, Armenian and small-capital letters that read as the Latin letters of our markers and headers.
_LEFT, _RIGHT = "‹«〈⟨〈❮❬ᐸ˂⋖⟪", "›»〉⟩〉❯❭ᐳ˃⋗⟫"
_COLONS = "꞉∶ː˸։׃᛬⁚⠒"
_CYRILLIC = "АВЕКМНОРСТХУЅІЈԚԜаеорсухѕіјԛԝһԁ", "ABEKMHOPCTXYSIJQWaeopcyxsijqwhd"
_GREEK = "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαινρκυϲϳ", "ABEZHIKMNOPTYXoaivpkucj"
_OTHER = "օսռհıᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "ounhiABCDEFGHIJKLMNOPRSTUVWYZ"
_LOOKALIKES = str.maketrans(
    {
        **{c: "<" for c in _LEFT},
        **{c: ">" for c in _RIGHT},
        **{c: ":" for c in _COLONS},
        **dict(zip(_CYRILLIC[0] + _GREEK[0] + _OTHER[0], _CYRILLIC[1] + _GREEK[1] + _OTHER[1], strict=True)),
        "≪": "<<", "⋘": "<<<", "⪡": "<<", "≫": ">>", "⋙": ">>>", "⪢": ">>",
    }
)  # fmt: skip
# Our markers (<<<TOOL_RESULT … TOOL_RESULT>>>) in skeleton form, with any number of angle brackets.
_MARKER = re.compile(r"<{2,}toolresult|toolresult>{2,}")
# Role and step headers that chat formats and our step format (and ReAct's) put at the start of a line.
_HEADERS = (
    "observation", "thought", "action", "input", "final answer", "answer", "user", "assistant", "system", "human",
    "gpt", "model", "tool", "function", "instruction", "response", "###",
)  # fmt: skip
# Before a header: markdown emphasis, quotes, list bullets and numbers, which a model reads through.
_HEADER = re.compile(
    r"^(?:[#>*_`'\"~+\-\s]|\d+[.)])*(?:" + "|".join(re.escape(h) for h in _HEADERS) + r")[*_`'\"~\s]*:", re.I
)
# Turn tags that chat formats also put in the middle of a line (Vicuna's "… ASSISTANT:", Mistral's "[/INST]").
_INLINE = re.compile(r"\[\s*/?\s*inst\s*\]|\b(?:user|assistant|system|observation)\s*:", re.I)


def _folded(text: str) -> str:
    """NFKC, HTML entities decoded, look-alikes folded, and format characters and combining marks dropped."""
    folded = unicodedata.normalize("NFKC", html.unescape(text)).translate(_LOOKALIKES)
    decomposed = unicodedata.normalize("NFD", folded)  # "ŕ" is "r" and a mark to a model reading the line
    return "".join(ch for ch in decomposed if unicodedata.category(ch) not in ("Cf", "Mn"))


def skeleton(text: str) -> str:
    """`text` as a model would read it: folded (look-alikes, marks, format characters), case-folded, without
    spaces or separators."""
    return "".join(ch for ch in _folded(text).casefold() if ch.isalnum() or ch in "<>#:")


def _header_form(line: str) -> str:
    """The line folded as in `skeleton`, spaces and case kept (for _HEADER)."""
    return unicodedata.normalize("NFC", _folded(line))


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
