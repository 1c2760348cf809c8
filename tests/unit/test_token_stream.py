"""The token loop's pure part: bytes of sampled tokens to text deltas, with stop strings (no llama.cpp)."""

from __future__ import annotations

import pytest

from vision_agent.backends.llama_cpp.token_loop import TextStream, first_stop, partial_stop


def run(pieces: list[bytes], stops: list[str] = ()) -> tuple[list[str], bool]:
    """The deltas a stream releases for `pieces` (then flushed), and whether a stop string ended it."""
    stream = TextStream(list(stops))
    deltas = []
    for piece in pieces:
        deltas.append(stream.feed(piece))
        if stream.stopped:
            break
    deltas.append(stream.flush())
    return deltas, stream.stopped


def text_of(pieces, stops=()) -> str:
    return "".join(run(pieces, stops)[0])


def test_ascii_passes_through_token_by_token():
    deltas, stopped = run([b"Hello", b" wor", b"ld"])
    assert deltas == ["Hello", " wor", "ld", ""] and not stopped


def test_a_character_split_across_tokens_comes_out_whole_once_complete():
    euro = "€".encode()  # three bytes
    deltas, _ = run([b"a", euro[:1], euro[1:2], euro[2:] + b"b"])
    assert deltas == ["a", "", "", "€b", ""]


def test_four_byte_character_one_byte_per_token():
    emoji = "🙂".encode()
    deltas, _ = run([bytes([b]) for b in emoji])
    assert "".join(deltas) == "🙂" and deltas[:3] == ["", "", ""]


def test_an_unfinished_character_at_the_end_is_dropped():
    assert text_of([b"ok ", "€".encode()[:2]]) == "ok "


def test_invalid_bytes_are_dropped_as_llama_cpp_python_does():
    # A lone continuation byte, a lead byte followed by ASCII, an overlong form: all ignored.
    pieces = [b"a", b"\x80", b"b", b"\xc3", b"c", b"\xc0\xaf", b"d"]
    assert text_of(pieces) == b"".join(pieces).decode("utf-8", errors="ignore") == "abcd"


@pytest.mark.parametrize("split", range(1, 12))
def test_any_split_of_the_bytes_gives_the_one_shot_decoding(split):
    data = "naïve 你好 🙂 ok".encode()
    pieces = [data[i : i + split] for i in range(0, len(data), split)]
    assert text_of(pieces) == data.decode()


def test_stop_string_inside_one_token_cuts_before_it():
    deltas, stopped = run([b"one two", b" three\nUSER: x", b"never"], ["\nUSER:"])
    assert "".join(deltas) == "one two three" and stopped


def test_stop_string_across_token_boundaries_is_held_back_then_dropped():
    deltas, stopped = run([b"answer", b"\nUS", b"ER", b": more"], ["\nUSER:"])
    assert deltas == ["answer", "", "", "", ""] and stopped


def test_held_text_is_released_as_soon_as_it_cannot_be_a_stop():
    deltas, stopped = run([b"a\nUS", b"A is big"], ["\nUSER:"])
    assert deltas == ["a", "\nUSA is big", ""] and not stopped


def test_a_partial_stop_at_the_very_end_is_text():
    deltas, stopped = run([b"a", b"\nUSE"], ["\nUSER:"])
    assert "".join(deltas) == "a\nUSE" and not stopped


def test_multibyte_stop_string_split_inside_its_characters():
    stop = "→停"
    data = "go →停 here".encode()
    pieces = [bytes([b]) for b in data]
    deltas, stopped = run(pieces, [stop])
    assert "".join(deltas) == "go " and stopped


def test_stop_bytes_inside_another_character_do_not_match():
    # "©" is C2 A9 and "é" is C3 A9: a byte-level matcher looking for A9... must not fire on "é".
    deltas, stopped = run(["café".encode(), b"!"], ["©"])
    assert "".join(deltas) == "café!" and not stopped


def test_earliest_of_several_stop_strings_wins():
    assert text_of([b"xx END yy STOP"], ["STOP", "END"]) == "xx "
    assert text_of([b"abc"], ["c", "bc"]) == "a"


def test_empty_and_duplicate_stop_strings_are_ignored():
    assert text_of([b"text"], ["", "zz", "zz"]) == "text"


def test_nothing_after_a_stop_even_if_fed():
    stream = TextStream(["!"])
    assert stream.feed(b"hi!there") == "hi"
    assert stream.feed(b"more") == "" and stream.flush() == ""


def test_held_text_is_bounded_by_the_longest_stop():
    stream = TextStream(["abcdef"])
    released = "".join(stream.feed(b"abcde" * 1) for _ in range(1000))
    assert len("abcde" * 1000) - len(released) <= 5


def test_helpers():
    assert first_stop("hello world", ["wor", "o"]) == 4
    assert first_stop("hello", ["x"]) is None
    assert partial_stop("hello wo", ["world", "o!"]) == 2
    assert partial_stop("hello", ["world"]) == 0
    assert partial_stop("ab", ["ab"]) == 0  # a whole stop is not a partial one


def test_stop_string_is_matched_in_the_text_shown_even_with_invalid_bytes_between():
    # The user would see "zzzz": it stops, though the raw bytes never hold b"zzzz".
    pieces = [b"ok ", b"z", b"\xf8", b"z", b"\xf8", b"z", b"\xf8", b"z", b"more"]
    deltas, stopped = run(pieces, ["zzzz"])
    assert "".join(deltas) == "ok " and stopped
