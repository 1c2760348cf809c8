"""Text is text: only the chat format's own structure may produce special tokens.

llama.cpp tokenises a prompt with special-token parsing on, so `</s>`, `<|im_end|><|im_start|>system` or
libmtmd's media marker inside a tool result, a search snippet, a file name or an earlier answer would
become real control tokens (or an image slot). Before a conversation is rendered, every such string in
its text is swapped for a placeholder (noncharacters around an index) that no template or tokeniser
treats specially; after rendering, the prompt is cut at the structure's own special tokens and media
markers, and each stretch of text between them, placeholders restored, is tokenised as plain text. This
is how llama.cpp itself splits a prompt at special tokens, so a prompt without such strings in its text
takes the usual path and tokenises exactly as before.

Some vocabularies mark structural tokens USER_DEFINED (ChatML's `<|im_start|>` in some conversions), and
llama.cpp matches those even with special-token parsing off. Such a string in text is cut into pieces
that are tokenised apart, so no piece can become the token. Which USER_DEFINED tokens count as structure:
those the chat template writes, and those spelled like `<|…|>`; the others (HTML tags, runs of spaces in
some vocabularies) are ordinary text tokens and stay as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vision_agent.core.messages import Message, TextPart

OPEN, CLOSE = "\ufdd0", "\ufdd1"
_PLACEHOLDER = re.compile(f"{OPEN}(\\d+){CLOSE}")


_SPECIAL_SPELLING = re.compile(r"<\|[^|\s]{1,64}\|>")


@dataclass(frozen=True)
class VocabFacts:
    specials: tuple[str, ...]  # texts llama.cpp turns into control (or unknown) tokens when parsing specials
    control_ids: frozenset[int]  # those tokens' ids
    user_defined: dict[str, int]  # USER_DEFINED tokens' texts (matched even as text) and their ids
    max_token_bytes: int  # an upper bound on the bytes one token stands for

    def structural(self, template: str) -> dict[str, int]:
        """The USER_DEFINED tokens that act as structure: written by `template`, or spelled `<|…|>`."""
        return {text: token for text, token in self.user_defined.items()
                if text in template or _SPECIAL_SPELLING.fullmatch(text)}  # fmt: skip


def read_vocab(vocab) -> VocabFacts:
    """One pass over the vocabulary (about 0.1 s for 150k tokens)."""
    import llama_cpp

    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    specials = set()
    ids = set()
    user_defined = {}
    longest = 1
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        text = llama_cpp.llama_vocab_get_text(vocab, token) or b""
        # The stored text is never shorter than the bytes it stands for ("▁" is 3 bytes for a space, "<0x0A>"
        # six for one byte, byte-level BPE one or two per byte), so its length bounds them.
        longest = max(longest, len(text))
        attributes = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attributes & wanted:
            ids.add(token)
            if text.strip():
                specials.add(text.decode("utf-8", errors="replace"))
        elif attributes & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and text.strip():
            user_defined[text.decode("utf-8", errors="replace")] = token
    return VocabFacts(tuple(sorted(specials, key=lambda s: (-len(s), s))), frozenset(ids), user_defined, longest)


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
    def __init__(self, specials: tuple[str, ...], media_marker: str, unbreakable: tuple[str, ...] = ()):
        """`specials`: what the structure may turn into tokens; `unbreakable`: those among them llama.cpp
        would match even in text (USER_DEFINED), which text gets only in pieces."""
        self.media_marker = media_marker
        structure = [*specials, *unbreakable, media_marker]
        self._structure = re.compile(trie_pattern(structure))
        self._protected = re.compile(trie_pattern([*structure, OPEN, CLOSE]))
        self._unbreakable = frozenset(unbreakable)
        self._inside = re.compile(trie_pattern(list(unbreakable)))

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
            parts += self._text_parts(text[position : match.start()], table)
            parts.append(("media" if match.group() == self.media_marker else "special", match.group()))
            position = match.end()
        return parts + self._text_parts(text[position:], table)

    def _text_parts(self, text: str, table: list[str]) -> list[tuple[str, str]]:
        """Text with its placeholders restored, cut apart around originals llama.cpp would match as text."""
        parts: list[tuple[str, str]] = []
        pending = ""
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            pending += text[position : match.start()]
            original = _original(match, table)
            if original in self._unbreakable:
                parts += [("text", piece) for piece in (pending, *self._apart(original)) if piece]
                pending = ""
            else:
                pending += original
            position = match.end()
        pending += text[position:]
        return parts + ([("text", pending)] if pending else [])

    def _apart(self, text: str) -> list[str]:
        """`text` in halves, and halves of halves, until no piece holds a token matched even as text."""
        if len(text) < 2:
            return [text]
        middle = len(text) // 2
        return [
            piece
            for half in (text[:middle], text[middle:])
            for piece in (self._apart(half) if self._inside.search(half) else [half])
        ]


def restore(text: str, table: list[str]) -> str:
    return _PLACEHOLDER.sub(lambda match: _original(match, table), text)


def _original(match: re.Match, table: list[str]) -> str:
    index = int(match.group(1))
    return table[index] if index < len(table) else match.group()


def has_placeholder(text: str) -> bool:
    return OPEN in text
