"""The model's own tokens stand for its earlier answers when they come back in a later prompt.

Re-tokenising an answer's text rarely gives back the tokens that were sampled (and a chat template puts
glue such as a space between "ASSISTANT:" and the answer that the model never saw). Either difference
would make the KV cache diverge at the start of every answer and force it to be evaluated again. As
llama-mtmd-cli does by keeping its context, we splice the sampled tokens back in, so the model sees
exactly what it produced and the held KV entries stay valid. This decides what the prompt is, so it
applies with caching on and off alike.
"""

from __future__ import annotations

from collections import OrderedDict

TAIL_CHARS = 24  # how much of the generation prompt must precede the answer for a splice


Piece = str | tuple[int, ...]  # text to tokenise, or tokens to use as they are


class AnswerTokens:
    def __init__(self, max_answers: int = 256):
        self.max_answers = max_answers
        # (tail, answer text) -> tokens: the same answer after another prompt may have other tokens.
        self._answers: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()

    def record(self, prompt: str, answer: str, tokens: list[int]) -> None:
        if not answer.strip() or not tokens or self.max_answers == 0:
            return
        key = (prompt[-TAIL_CHARS:], answer)
        self._answers[key] = tuple(tokens)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_answers:
            self._answers.popitem(last=False)

    def split(self, text: str) -> list[Piece]:
        """`text` as text pieces and token spans, in order."""
        spans = []
        for (tail, answer), tokens in self._answers.items():
            start = text.find(answer)
            while start >= 0:
                glue_start = _glue_start(text, start, tail)
                if glue_start is not None:
                    spans.append((glue_start, start + len(answer), tokens))
                start = text.find(answer, start + 1)
        pieces: list[Piece] = []
        position = 0
        for begin, end, tokens in sorted(spans):
            if begin < position:
                continue  # overlaps a span already taken
            if begin > position:
                pieces.append(text[position:begin])
            pieces.append(tokens)
            position = end
        if position < len(text):
            pieces.append(text[position:])
        return pieces


def _glue_start(text: str, start: int, tail: str) -> int | None:
    """Where the answer's glue begins: right after the generation prompt's tail, with only whitespace
    (the template's glue, which the model never saw) before the answer. None when the tail is not there."""
    glue_start = start
    while glue_start > 0 and text[glue_start - 1] in " \t" and not text[:glue_start].endswith(tail):
        glue_start -= 1
    if not tail or not text[:glue_start].endswith(tail):
        return None
    return glue_start
