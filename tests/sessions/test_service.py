"""The prompt service on the replay backend (a real Session and SQLite store): one worker, a bounded queue,
exactly one ending per job (a fail, or events ending with one done), cancels handled at once, answers by key."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from tests.helpers import png_bytes, replay_model
from vision_agent.config import load_settings
from vision_agent.core.events import Done, RunStarted, ToolResult
from vision_agent.errors import ConfigError, ImageDecodeError, ImageNotFoundError, ImageTooLargeError
from vision_agent.sessions.records import ConversationNotFound
from vision_agent.sessions.service import Busy, Job, PromptService, Replies
from vision_agent.sessions.session import Session

CALC = 'Thought: add\nAction: calculator\nInput: {"expression": "12 + 30"}'
LONG = "Answer: " + " ".join(f"word{i}" for i in range(400))


class Collector:
    """A job's callbacks: what it received, and an event set when it ended."""

    def __init__(self):
        self.events, self.failures = [], []
        self.ended = threading.Event()

    def emit(self, event):
        self.events.append(event)
        if isinstance(event, Done):
            self.ended.set()

    def fail(self, error):
        self.failures.append(error)
        self.ended.set()

    def job(self, key, prompt="hi", **fields):
        return Job(key=key, prompt=prompt, emit=self.emit, fail=self.fail, **fields)

    def wait(self, limit=30):
        assert self.ended.wait(limit), "the job never ended"
        return self


@pytest.fixture
def service_for(tmp_path, monkeypatch):
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    opened = []

    def make(*turns, delay=0.0, max_queued=4, **sections):
        model = replay_model(tmp_path, *turns, token_delay_s=delay)
        store = {"path": str(tmp_path / "s.db")}
        settings = load_settings(None, {"model": {"name": model}, "store": store, **sections})
        service = PromptService(Session.open(settings), max_queued=max_queued)
        opened.append(service)
        return service

    yield make
    for service in opened:
        service.cancel_all()
        service.close(10)
        service.session.close()


def wait_until(condition, limit=10.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_jobs_run_in_order_each_ending_with_one_done_and_stored(service_for):
    service = service_for("Answer: one", "Answer: two", "Answer: three")
    first, second = Collector(), Collector()
    service.submit(first.job("a", "first"))
    service.submit(second.job("b", "second"))
    first.wait(), second.wait()
    for got in (first, second):
        assert got.failures == []
        assert isinstance(got.events[0], RunStarted) and [type(e) for e in got.events].count(Done) == 1
        assert got.events[-1].status == "ok"
    assert second.events[0].prompt == "second"
    follow = Collector()
    conversation = first.events[-1].conversation_id
    service.submit(follow.job("c", "again", conversation=conversation[:6]))  # an id prefix resolves
    assert follow.wait().events[-1].conversation_id == conversation
    assert [t.prompt for t in service.session.store.turns(conversation)] == ["first", "again"]
    assert service.status()["completed"] == 3


def test_a_full_queue_is_busy_a_duplicate_key_refused_and_status_answers_while_running(service_for):
    service = service_for(LONG, "Answer: b", "Answer: c", delay=0.01, max_queued=1)
    running, queued = Collector(), Collector()
    service.submit(running.job("r"))
    wait_until(lambda: service.status()["running"] == "r")
    service.submit(queued.job("q"))
    with pytest.raises(Busy):
        service.submit(Collector().job("x"))
    with pytest.raises(ConfigError, match="already"):
        service.submit(Collector().job("r"))
    status = service.status()
    assert status["running"] == "r" and status["queued"] == ["q"] and status["model"].startswith("replay:")
    assert service.cancel("r")
    running.wait(), queued.wait()
    assert running.events[-1].status == "cancelled" and queued.events[-1].status == "ok"


def test_cancel_running_and_queued_jobs(service_for):
    service = service_for(LONG, "Answer: never", delay=0.01)
    running, queued = Collector(), Collector()
    service.submit(running.job("r", "long one"))
    service.submit(queued.job("q", "waits"))
    wait_until(lambda: len(running.events) > 3)
    assert service.cancel("q")  # dropped at once: only a cancelled done
    assert queued.ended.is_set() and len(queued.events) == 1 and queued.events[0].status == "cancelled"
    assert service.cancel("r")
    done = running.wait().events[-1]
    assert done.status == "cancelled"
    assert service.cancel("r") is False and service.cancel("nobody") is False
    turns = service.session.store.turns(done.conversation_id)
    assert [t.status for t in turns] == ["cancelled"]
    assert len(service.session.store.list()) == 1  # the queued prompt never ran: nothing stored of it


def test_a_job_that_cannot_start_fails_once_and_the_next_one_runs(service_for, tmp_path):
    service = service_for("Answer: fine")
    cases = [
        ({"images": [str(tmp_path / "missing.png")]}, ImageNotFoundError),
        ({"images": [b"not an image"]}, ImageDecodeError),
        ({"images": ["data:image/png;base64,@@@"]}, ImageDecodeError),
        ({"conversation": "no-such-conversation"}, ConversationNotFound),
        ({"new_id": "../../etc"}, ConfigError),
        ({"overrides": {"model": {"n_ctx": 1}}}, ConfigError),
    ]
    for fields, error in cases:
        got = Collector()
        service.submit(got.job("k", **fields))
        got.wait()
        assert got.events == [] and len(got.failures) == 1 and isinstance(got.failures[0], error), fields
    good = Collector()
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    service.submit(good.job("k", images=[image, png_bytes(color=(0, 0, 255))], new_id="ab" * 16))
    events = good.wait().events
    assert events[-1].status == "ok" and events[-1].conversation_id == "ab" * 16
    assert len(events[0].images) == 2


def test_an_approval_answered_by_key_and_a_cancel_while_waiting_refuses(service_for):
    service = service_for(CALC, "Answer: 42", CALC, "Answer: no", tools={"policy": {"calculator": "ask"}})
    replies = Replies()
    asked = []

    def approver_for(job_box):
        def approve(call):
            key = f"call-{len(asked)}"
            replies.expect(key)
            asked.append(key)
            return bool(replies.wait(key, timeout=30, cancel=job_box[0].cancel))

        return approve

    box: list = []
    allowed = Collector()
    box.append(allowed.job("a", approver=approver_for(box)))
    service.submit(box[0])
    wait_until(lambda: replies.pending() == ["call-0"])
    assert replies.answer("call-0", True) and not replies.answer("call-0", False)
    result = next(e for e in allowed.wait().events if isinstance(e, ToolResult))
    assert result.ok and result.output == "42"

    box2: list = []
    refused = Collector()
    box2.append(refused.job("b", approver=approver_for(box2)))
    service.submit(box2[0])
    wait_until(lambda: replies.pending() == ["call-1"])
    service.cancel("b")
    assert refused.wait().events[-1].status == "cancelled"
    assert replies.pending() == [] and replies.answer("call-1", True) is False


def test_replies_time_out_to_none():
    replies = Replies()
    replies.expect("k")
    started = time.monotonic()
    assert replies.wait("k", timeout=0.1) is None
    assert time.monotonic() - started < 5
    assert replies.answer("k", True) is False  # nobody waits any more
    assert replies.wait("never-expected", timeout=0.1) is None


def test_close_finishes_the_queue_then_refuses(service_for):
    service = service_for("Answer: one two", "Answer: three", delay=0.01)
    got = [Collector(), Collector()]
    service.submit(got[0].job("a"))
    service.submit(got[1].job("b"))
    assert service.close(30)
    assert [g.events[-1].status for g in got] == ["ok", "ok"]
    with pytest.raises(ConfigError, match="shutting down"):
        service.submit(Collector().job("c"))


def test_image_inputs_are_bounded_before_decoding(tmp_path):
    from vision_agent.config import ImageSettings
    from vision_agent.core.images import load_images

    limits = ImageSettings(max_bytes=2000)
    with pytest.raises(ImageTooLargeError):
        load_images(["data:image/png;base64," + "A" * 10_000], limits)
    with pytest.raises(ImageDecodeError, match="base64"):
        load_images(["data:image/png,rawbytes"], limits)
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    images = load_images([str(path), png_bytes(size=(8, 8))], ImageSettings())
    assert [(i.width, i.height) for i in images] == [(64, 48), (8, 8)]
    with pytest.raises(ImageTooLargeError, match="per request"):
        load_images([png_bytes(size=(64, 64))] * 3, ImageSettings(max_total_pixels=64 * 64 * 2))


def test_a_key_is_free_again_once_its_ending_is_delivered(service_for, tmp_path):
    """A client that sends its next prompt with the same key as soon as it sees the done (or the error) is never
    told the key is still in use, though the worker may still be winding the run down."""
    service = service_for("Answer: one", "Answer: two", "Answer: three")
    outcomes = []
    finished = threading.Event()

    def again(key):
        def submit(_ending):
            try:
                service.submit(Collector().job(key, "next"))
                outcomes.append("accepted")
            except ConfigError as exc:
                outcomes.append(str(exc))
            finished.set()

        return submit

    failing = Job(key="a", prompt="x", images=[str(tmp_path / "missing.png")], emit=again("a"), fail=again("a"))
    service.submit(failing)
    assert finished.wait(30)
    finished.clear()
    on_done = again("b")
    answered = Job(key="b", prompt="y", emit=lambda e: on_done(e) if isinstance(e, Done) else None, fail=on_done)
    service.submit(answered)
    assert finished.wait(30)
    assert outcomes == ["accepted", "accepted"]


def test_closed_replies_end_every_wait_at_once():
    replies = Replies()
    replies.expect("k")
    got = []
    waiter = threading.Thread(target=lambda: got.append(replies.wait("k", timeout=600)))
    waiter.start()
    time.sleep(0.1)
    replies.close()
    waiter.join(10)
    assert not waiter.is_alive() and got == [None]
    replies.expect("later")
    assert replies.wait("later", timeout=600) is None
