"""The saved conversation is input too: damaged turns are left out with a note, the rest is kept."""

from __future__ import annotations

import json

import pytest

from tests.helpers import image_part, png_bytes
from vision_agent.core.messages import Conversation, Message
from vision_agent.errors import ConfigError, StoreError
from vision_agent.history import load_last, save_last


def image(color=(200, 30, 30), size=(16, 12)):
    return image_part(size=size, color=color, source="x.png")


def saved(tmp_path, turns=3):
    conversation = Conversation()
    red = image()
    for n in range(turns):
        conversation.add_turn(
            [Message.user(f"question {n}", [red] if n == 0 else []), Message.assistant(f"answer {n}")]
        )
    save_last(conversation, tmp_path)
    return json.loads((tmp_path / "last.json").read_text()), red


def rewrite(tmp_path, data):
    (tmp_path / "last.json").write_text(json.dumps(data))


def test_round_trip(tmp_path):
    data, red = saved(tmp_path)
    loaded = load_last(tmp_path)
    assert loaded.problems == []
    assert [m.text for m in loaded.conversation.messages][:2] == ["question 0", "answer 0"]
    assert loaded.conversation.images[0].sha256 == red.sha256
    assert loaded.conversation.turn_starts == [0, 2, 4]


def test_image_size_that_disagrees_with_its_png_drops_that_turn_only(tmp_path):
    # Trusting the stored width and height once made libmtmd read past the pixel buffer (SIGSEGV).
    data, _ = saved(tmp_path)
    data["messages"][0]["parts"][0]["width"] = 4000
    rewrite(tmp_path, data)
    loaded = load_last(tmp_path)
    assert [m.text for m in loaded.conversation.messages] == ["question 1", "answer 1", "question 2", "answer 2"]
    assert loaded.conversation.images == []
    assert "1 damaged turn" in loaded.problems[0] and "does not match" in loaded.problems[0]


def test_png_replaced_by_another_image_is_detected(tmp_path):
    data, red = saved(tmp_path)
    (tmp_path / "images" / f"{red.sha256}.png").write_bytes(png_bytes(size=(16, 12), color=(0, 0, 255)))
    loaded = load_last(tmp_path)
    assert loaded.conversation.images == [] and loaded.problems


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["messages"][2].update(role="root"),
        lambda d: d["messages"][2].update(parts="not a list"),
        lambda d: d["messages"][2]["parts"][0].update(text=12),
        lambda d: d["messages"][2].update(parts=[]),
        lambda d: d["messages"].__setitem__(2, "garbage"),
        lambda d: d["messages"][2]["parts"].append({"type": "image", "sha256": "../../etc/passwd", "width": 1}),
        lambda d: d["messages"][2]["parts"].append({"type": "image", "sha256": "0" * 64, "width": 1, "height": 1}),
    ],
)
def test_a_damaged_message_costs_its_turn(tmp_path, damage):
    data, _ = saved(tmp_path)
    damage(data)
    rewrite(tmp_path, data)
    loaded = load_last(tmp_path)
    texts = [m.text for m in loaded.conversation.messages]
    assert texts == ["question 0", "answer 0", "question 2", "answer 2"]
    assert loaded.problems


def test_a_tool_step_is_never_kept_without_its_result(tmp_path):
    conversation = Conversation()
    step = 'Thought: add\nAction: calculator\nInput: {"expression": "1+1"}'
    conversation.add_turn(
        [Message.user("1+1?"), Message.assistant(step), Message.user("Observation: 2"), Message.assistant("2")]
    )
    save_last(conversation, tmp_path)
    data = json.loads((tmp_path / "last.json").read_text())
    data["messages"][2]["parts"] = 7  # the observation is damaged
    rewrite(tmp_path, data)
    loaded = load_last(tmp_path)
    assert loaded.conversation.messages == [] and loaded.problems


@pytest.mark.parametrize(
    "field, value",
    [("turn_starts", [5, 1]), ("turn_starts", "x"), ("turn_starts", [0, 99]), ("hidden_before", -3),
     ("hidden_before", 10**9), ("images_hidden_before", "a")],
)  # fmt: skip
def test_bad_bookkeeping_is_rebuilt(tmp_path, field, value):
    data, _ = saved(tmp_path)
    data[field] = value
    rewrite(tmp_path, data)
    conversation = load_last(tmp_path).conversation
    assert len(conversation.messages) == 6
    assert 0 <= conversation.hidden_before <= 6 and 0 <= conversation.images_hidden_before <= 6
    assert conversation.turn_boundaries()[0] == 0


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe\x00", b"[]", b'{"version": 1}', b'{"version": 7, "messages": []}',
                                     b'{"version": 1, "messages": {}}'])  # fmt: skip
def test_an_unreadable_file_is_a_store_error(tmp_path, content):
    (tmp_path / "last.json").write_bytes(content)
    with pytest.raises(StoreError, match="ask without -c"):
        load_last(tmp_path)


def test_no_file_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="no previous conversation"):
        load_last(tmp_path)


def test_a_directory_in_place_of_the_file(tmp_path):
    (tmp_path / "last.json").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        load_last(tmp_path)


def test_saving_where_nothing_can_be_written_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a directory cannot be made under a file, even as root
    conversation = Conversation()
    conversation.add_turn([Message.user("q"), Message.assistant("a")])
    with pytest.raises(StoreError, match="could not be saved"):
        save_last(conversation, blocker / "history")


def test_concurrent_saves_never_share_a_temporary_file(tmp_path):
    import threading

    conversation = Conversation()
    conversation.add_turn([Message.user("q", [image()]), Message.assistant("a")])
    errors = []

    def save():
        try:
            for _ in range(20):
                save_last(conversation, tmp_path)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert load_last(tmp_path).conversation.messages[1].text == "a"
    assert not [p for p in tmp_path.rglob("*.tmp")]
