"""Text is text: only the chat format's own structure may produce special tokens.

llama.cpp tokenises a prompt with special-token parsing on, so `</s>`, `<|im_end|><|im_start|>system` or
libmtmd's media marker inside a tool result, a search snippet, a file name or an earlier answer would
become real control tokens (or an image slot). Before a conversation is rendered, every such string in
its text is swapped for a placeholder (noncharacters around an index) that no template or tokeniser
treats specially; after rendering, the prompt is cut at the structure's own special tokens and media
markers, and each stretch of text between them, placeholders restored, is tokenised as plain text. This
is how llama.cpp itself splits a prompt at special tokens, so a prompt without such strings in its text
takes the usual path and tokenises exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vision_agent.messages import Message, TextPart

OPEN, CLOSE = "\ufdd0", "\ufdd1"
_PLACEHOLDER = re.compile(f"{OPEN}(\\d+){CLOSE}")


@dataclass(frozen=True)
class VocabFacts:
    specials: tuple[str, ...]  # texts llama.cpp turns into control (or unknown) tokens when parsing specials
    control_ids: frozenset[int]  # those tokens' ids
    max_token_bytes: int  # an upper bound on the bytes one token stands for


def read_vocab(vocab) -> VocabFacts:
    """One pass over the vocabulary (about 0.1 s for 150k tokens)."""
    import llama_cpp

    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    specials = set()
    ids = set()
    longest = 1
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        text = llama_cpp.llama_vocab_get_text(vocab, token) or b""
        # The stored text is never shorter than the bytes it stands for ("▁" is 3 bytes for a space, "<0x0A>"
        # six for one byte, byte-level BPE one or two per byte), so its length bounds them.
        longest = max(longest, len(text))
        if llama_cpp.llama_vocab_get_attr(vocab, token) & wanted:
            ids.add(token)
            if text.strip():
                specials.add(text.decode("utf-8", errors="replace"))
    return VocabFacts(tuple(sorted(specials, key=lambda s: (-len(s), s))), frozenset(ids), longest)


def trie_pattern(strings: list[str]) -> str:
    """A regex matching any of `strings`, longest first, factored by prefix (fast for thousands of strings)."""
    trie: dict = {}
    for string in strings:
        node = trie
        for char in string:
            node = node.setdefault(char, {})
        node[""] = True

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie) if trie else "(?!)"


class TextGuard:
    def __init__(self, specials: tuple[str, ...], media_marker: str):
        self.media_marker = media_marker
        structure = [*specials, media_marker]
        self._structure = re.compile(trie_pattern(structure))
        self._protected = re.compile(trie_pattern([*structure, OPEN, CLOSE]))

    def protect(self, messages: list[Message]) -> tuple[list[Message], list[str]]:
        """The messages with every special string in their text swapped for a placeholder; the originals."""
        table: list[str] = []

        def swap(match: re.Match) -> str:
            table.append(match.group())
            return f"{OPEN}{len(table) - 1}{CLOSE}"

        guarded = []
        for message in messages:
            if not any(isinstance(p, TextPart) and self._protected.search(p.text) for p in message.parts):
                guarded.append(message)
                continue
            parts = [
                TextPart(text=self._protected.sub(swap, p.text)) if isinstance(p, TextPart) else p
                for p in message.parts
            ]
            guarded.append(Message(role=message.role, parts=parts))
        return guarded, table

    def split(self, text: str, table: list[str]) -> list[tuple[str, str]]:
        """A rendered prompt as ("text" | "special" | "media", string) parts, placeholders restored as text."""
        parts: list[tuple[str, str]] = []
        position = 0
        for match in self._structure.finditer(text):
            if match.start() > position:
                parts.append(("text", restore(text[position : match.start()], table)))
            parts.append(("media" if match.group() == self.media_marker else "special", match.group()))
            position = match.end()
        if position < len(text):
            parts.append(("text", restore(text[position:], table)))
        return parts


def restore(text: str, table: list[str]) -> str:
    def original(match: re.Match) -> str:
        index = int(match.group(1))
        return table[index] if index < len(table) else match.group()

    return _PLACEHOLDER.sub(original, text)


def has_placeholder(text: str) -> bool:
    return OPEN in text
