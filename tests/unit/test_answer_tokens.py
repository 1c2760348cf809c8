"""Splicing the sampled tokens of earlier answers back into a prompt (pure text logic)."""

from __future__ import annotations

from vision_agent.backends.llama_cpp.answer_tokens import AnswerTokens


def test_vicuna_glue_is_dropped_and_the_answer_becomes_its_tokens():
    answers = AnswerTokens()
    prompt = "SYSTEM: x\nUSER: hi\nASSISTANT:"
    answers.record(prompt, "Hello there.", [7, 8, 9])
    pieces = answers.split(prompt + " Hello there.\nUSER: more\nASSISTANT:")
    assert pieces == [prompt, (7, 8, 9), "\nUSER: more\nASSISTANT:"]


def test_chatml_newline_belongs_to_the_generation_prompt():
    answers = AnswerTokens()
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    answers.record(prompt, "Hi!", [5])
    assert answers.split(prompt + "Hi!<|im_end|>\n") == [prompt, (5,), "<|im_end|>\n"]


def test_the_same_text_elsewhere_is_left_alone():
    answers = AnswerTokens()
    answers.record("USER: q\nASSISTANT:", "yes", [1])
    text = "USER: I said yes\nASSISTANT: no"
    assert answers.split(text) == [text]


def test_the_same_answer_after_two_prompts_keeps_each_tokenisation():
    answers = AnswerTokens()
    answers.record("USER: a\nASSISTANT:", "ok", [1])
    answers.record("USER: b\nASSISTANT:", "ok", [2])
    pieces = answers.split("USER: a\nASSISTANT: ok\nUSER: b\nASSISTANT: ok\n")
    assert pieces == ["USER: a\nASSISTANT:", (1,), "\nUSER: b\nASSISTANT:", (2,), "\n"]


def test_bounded_and_blank_answers_ignored():
    answers = AnswerTokens(max_answers=2)
    answers.record("P1:", "   ", [1])
    for n in range(3):
        answers.record(f"P{n}:", f"answer {n}", [n])
    assert answers.split("P0: answer 0") == ["P0: answer 0"]  # evicted, the oldest
    assert answers.split("P2: answer 2") == ["P2:", (2,)]
