"""The session service in-process on the replay backend, over a real SQLite store in tmp_path: events stamped,
turns committed with their status (never half), overrides that never touch the shared settings."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import image_part, replay_model
from vision_agent.config import load_settings
from vision_agent.core.events import Done, Token
from vision_agent.errors import ConfigError
from vision_agent.sessions.session import Session
from vision_agent.sessions.store import Store

CALC = 'Thought: add them\nAction: calculator\nInput: {"expression": "12 + 30"}'
ANSWER = "Thought: done\nAnswer: The total is 42."


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """The user's own data (and a last.json the store would import) stays out of these tests."""
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


def settings_for(tmp_path, *turns: str, **sections):
    model = replay_model(tmp_path, *turns, name="script.json")
    return load_settings(None, {"model": {"name": model}, "store": {"path": str(tmp_path / "s.db")}, **sections})


@pytest.fixture
def session_for(tmp_path):
    opened = []

    def make(*turns: str, **sections) -> Session:
        session = Session.open(settings_for(tmp_path, *turns, **sections))
        opened.append(session)
        return session

    yield make
    for session in opened:
        session.close()


def test_events_are_stamped_and_each_turn_committed(session_for):
    session = session_for(CALC, ANSWER, "Thought: again\nAnswer: Still 42.")
    red = image_part()
    first = list(session.run("Add the bars\nplease", [red]))
    conversation = first[0].conversation_id
    run_id = first[0].run_id
    assert len(conversation) == 32 and len(run_id) == 32
    assert all(e.conversation_id == conversation and e.run_id == run_id for e in first)  # every event, done too
    assert isinstance(first[-1], Done) and first[-1].status == "ok"

    second = list(session.run("And again?", [], conversation=conversation))
    assert {e.conversation_id for e in second} == {conversation}
    assert {e.run_id for e in second} != {run_id}
    # The second run's prompt holds the first turn: the model saw it (and its image).
    request = session.backend.requests[-1]
    texts = [m.text for m in request.messages]
    assert any("Add the bars" in t for t in texts) and any(m.images for m in request.messages)
    assert request.conversation_id == conversation  # the backend may key saved state by it

    store = session.store
    info = store.info(conversation)
    assert info.title == "Add the bars" and info.turns == 2
    turns = store.turns(conversation)
    assert [t.status for t in turns] == ["ok", "ok"]
    assert turns[0].prompt == "Add the bars\nplease" and turns[0].answer == "The total is 42."
    assert turns[0].images == [red.sha256] and turns[1].images == []
    step = turns[0].steps[0]
    assert (step.tool, step.arguments, step.ok, step.output) == ("calculator", {"expression": "12 + 30"}, True, "42")
    assert turns[0].run_id == run_id and turns[0].usage["completion_tokens"] > 0


def test_overrides_apply_to_one_run_and_never_change_the_shared_settings(session_for):
    session = session_for("Answer: one", "Answer: two", "Answer: three", agent={"max_steps": 3})
    before = session.settings.model_dump_json()
    registry = session.registry
    overrides = {"generation": {"max_tokens": 2, "stop": ["x"]}, "tools": {"default_policy": "off"}}
    events = list(session.run("q", [], overrides=overrides))
    assert events[-1].status == "ok"
    request = session.backend.requests[-1]
    assert request.max_tokens == 2 and request.stop == ["x"] and request.grammar is None  # no tools this run
    assert session.settings.model_dump_json() == before and session.registry is registry
    list(session.run("q", [], conversation=events[0].conversation_id))
    request = session.backend.requests[-1]
    assert request.max_tokens != 2 and request.stop == [] and request.grammar is not None  # the run's own settings


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"model": {"n_ctx": 128}}, "cannot change per run"),
        ({"generation": {"temperature": -1}}, "generation.temperature"),
        ({"generation": {"nope": 1}}, "generation.nope"),
        ({"agent": 3}, "must be a table"),
    ],
)
def test_bad_overrides_are_config_errors_before_anything_runs(session_for, overrides, words):
    session = session_for("Answer: x")
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        next(session.run("q", [], overrides=overrides))
    assert session.store.list() == [] and session.backend.requests == []


def test_a_failed_run_is_recorded_as_error(session_for):
    session = session_for("Answer: only one turn in this script", tools={"default_policy": "off"})
    list(session.run("first", []))
    events = list(session.run("second", [], conversation=session.store.latest()))
    done = events[-1]
    assert done.status == "error" and done.error.exit_code == 11
    turns = session.store.turns(done.conversation_id)
    assert [t.status for t in turns] == ["ok", "error"]
    assert "exhausted" in turns[1].error and turns[1].prompt == "second"


def test_a_cancelled_run_is_recorded_as_cancelled(session_for):
    session = session_for(CALC, ANSWER)
    cancel = threading.Event()
    cancel.set()
    events = list(session.run("stop at once", [], cancel=cancel))
    assert events[-1].status == "cancelled"
    [turn] = session.store.turns(events[-1].conversation_id)
    assert turn.status == "cancelled" and turn.prompt == "stop at once"


def test_a_consumer_that_stops_early_leaves_a_cancelled_turn_not_half_of_one(session_for):
    session = session_for("Answer: " + "word " * 50, tools={"default_policy": "off"})
    stream = session.run("long one", [])
    tokens = [event for event, _ in zip(stream, range(5), strict=False)]
    stream.close()
    assert any(isinstance(e, Token) for e in tokens)
    [turn] = session.store.turns(tokens[0].conversation_id)
    assert turn.status == "cancelled" and turn.answer.startswith("Answer: word")  # what was streamed


def test_the_backend_is_told_when_a_conversation_turn_ends(session_for):
    session = session_for("Answer: a", "Answer: b", tools={"default_policy": "off"})
    finished = []
    session.backend.finish_conversation = finished.append  # the hook a llama.cpp backend offers
    first = list(session.run("one", []))
    list(session.run("two", [], conversation=first[0].conversation_id))
    assert finished == [first[0].conversation_id] * 2


def test_a_store_that_cannot_be_opened_still_answers_then_says_so(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings = settings_for(tmp_path, "the answer", tools={"default_policy": "off"})
    settings.store.path = blocker / "s.db"  # nothing can be created below a file
    with Session.open(settings) as session:
        events = list(session.run("q", []))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "the answer"
    done = events[-1]
    assert done.status == "error" and done.error.exit_code == 14
    assert "could not be saved" in done.error.message


def test_runs_share_one_backend_and_one_registry(session_for):
    session = session_for("Answer: a", "Answer: b", tools={"default_policy": "off"})
    backend, registry = session.backend, session.registry
    list(session.run("one", []))
    list(session.run("two", []))
    assert session.backend is backend and session.registry is registry and len(backend.requests) == 2
    assert len(session.store.list()) == 2  # two new conversations


def test_a_given_store_is_used_and_left_open(tmp_path):
    settings = settings_for(tmp_path, "Answer: a", tools={"default_policy": "off"})
    with Store.open(tmp_path / "other.db") as store:
        with Session.open(settings, store=store) as session:
            events = list(session.run("q", []))
        assert store.info(events[-1].conversation_id).turns == 1  # still usable after the session closed
    assert not (tmp_path / "s.db").exists()
