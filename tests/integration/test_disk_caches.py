"""Image embeddings and conversation KV states kept on disk: a new process encodes nothing it has seen and
evaluates only the new turn, and the files are untrusted (damaged, foreign, swapped under it)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import image_part, run_cli
from vision_agent.backends.base import Finished, GenerationRequest, TextDelta
from vision_agent.backends.llama_cpp.disk_embeddings import HEADER, DiskEmbeddings
from vision_agent.backends.llama_cpp.disk_states import HEADER as STATE_HEADER
from vision_agent.backends.llama_cpp.disk_states import IMAGE as STATE_IMAGE
from vision_agent.backends.llama_cpp.disk_states import DiskStates
from vision_agent.core.messages import Message

SHA = "ab" * 32
N_TOKENS, N_EMBD = 4, 8


@pytest.fixture
def projector(tmp_path) -> Path:
    path = tmp_path / "mmproj.gguf"
    path.write_bytes(b"GGUF" + os.urandom(1000))
    return path


def embedding(seed: int = 0):
    return np.random.default_rng(seed).standard_normal(N_TOKENS * N_EMBD).astype(np.float32)


def stored_file(cache: DiskEmbeddings, sha: str = SHA) -> Path:
    return cache.folder / f"{sha}-{N_TOKENS}.emb"


def test_an_embedding_comes_back_exactly(tmp_path, projector):
    writer = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)
    writer.put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    reader = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)  # another process, as far as it knows
    assert np.array_equal(reader.get(SHA, N_TOKENS, N_TOKENS, N_EMBD), embedding())
    assert reader.get("cd" * 32, N_TOKENS, N_TOKENS, N_EMBD) is None


def test_another_projector_never_gets_these_embeddings(tmp_path, projector):
    DiskEmbeddings(tmp_path / "cache", projector, 1 << 20).put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    other = tmp_path / "other.gguf"
    other.write_bytes(projector.read_bytes()[:-1] + b"x")  # same size, one byte different
    assert DiskEmbeddings(tmp_path / "cache", other, 1 << 20).get(SHA, N_TOKENS, N_TOKENS, N_EMBD) is None


def test_a_projector_rewritten_in_place_is_hashed_again(tmp_path, projector):
    first = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20).projector_sha
    projector.write_bytes(b"GGUF" + os.urandom(1000))
    assert DiskEmbeddings(tmp_path / "cache", projector, 1 << 20).projector_sha != first


def tamper_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def tamper_longer(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0\0\0\0")


def tamper_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def tamper_other_image(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8 + 32 : 8 + 64] = bytes.fromhex("cd" * 32)  # the header names another image
    path.write_bytes(bytes(data))


def tamper_width(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER.size - 4 : HEADER.size] = (N_EMBD * 2).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def tamper_nan(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER.size : HEADER.size + 4] = np.array([np.nan], dtype="<f4").tobytes()
    path.write_bytes(bytes(data))


def tamper_directory(path: Path) -> None:
    path.unlink()
    (path / "inner").mkdir(parents=True)


def tamper_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def tamper_symlink(path: Path) -> None:
    target = path.with_name("elsewhere")
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)


def tamper_empty(path: Path) -> None:
    path.write_bytes(b"")


TAMPERS = [
    tamper_truncated,
    tamper_longer,
    tamper_garbage,
    tamper_other_image,
    tamper_width,
    tamper_nan,
    tamper_directory,
    tamper_fifo,
    tamper_symlink,
    tamper_empty,
]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.removeprefix("tamper_"))
def test_a_damaged_or_foreign_file_is_removed_and_never_used(tmp_path, projector, tamper):
    cache = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)
    cache.put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    path = stored_file(cache)
    tamper(path)
    done = []
    reader = threading.Thread(target=lambda: done.append(cache.get(SHA, N_TOKENS, N_TOKENS, N_EMBD)))
    reader.start()
    reader.join(5)
    assert done == [None], "a FIFO or anything else must not block or be used"
    assert not path.exists() and not path.is_symlink()
    cache.put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())  # and it is written anew
    assert np.array_equal(cache.get(SHA, N_TOKENS, N_TOKENS, N_EMBD), embedding())


def test_a_name_that_is_not_our_hash_is_never_a_path(tmp_path, projector):
    cache = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)
    cache.put("../../escape", N_TOKENS, N_TOKENS, N_EMBD, embedding())
    assert cache.get("../../escape", N_TOKENS, N_TOKENS, N_EMBD) is None
    assert not list(tmp_path.glob("**/escape*"))


def test_the_least_recently_used_go_first(tmp_path, projector):
    size = HEADER.size + N_TOKENS * N_EMBD * 4
    cache = DiskEmbeddings(tmp_path / "cache", projector, 3 * size)
    shas = [f"{i:02x}" * 32 for i in range(4)]
    for i, sha in enumerate(shas[:3]):
        cache.put(sha, N_TOKENS, N_TOKENS, N_EMBD, embedding(i))
        os.utime(stored_file(cache, sha), ns=(10**18 + i, 10**18 + i))
    assert cache.get(shas[0], N_TOKENS, N_TOKENS, N_EMBD) is not None  # used: now the most recent
    cache.put(shas[3], N_TOKENS, N_TOKENS, N_EMBD, embedding(3))
    kept = {sha for sha in shas if stored_file(cache, sha).exists()}
    assert kept == {shas[0], shas[2], shas[3]}
    assert sum(p.stat().st_size for p in cache.folder.glob("*.emb")) <= 3 * size


def test_a_temporary_file_left_by_a_killed_writer_goes_at_the_next_write(tmp_path, projector):
    cache = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)
    cache.put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    old, young = cache.folder / ".killed.tmp", cache.folder / ".writing.tmp"
    for path in (old, young):
        path.write_bytes(b"half")
    os.utime(old, ns=(10**18, 10**18))  # 2001
    cache.put("cd" * 32, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    assert not old.exists() and young.exists()  # another process may still be writing the young one


def test_an_unwritable_cache_costs_nothing_but_the_cache(tmp_path, projector):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = DiskEmbeddings(tmp_path / "cache", projector, 1 << 20)
    cache.folder = blocker / "below"  # cannot be created
    cache.put(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())
    assert cache.get(SHA, N_TOKENS, N_TOKENS, N_EMBD) is None


def test_writers_at_once_leave_one_whole_file(tmp_path, projector):
    caches = [DiskEmbeddings(tmp_path / "cache", projector, 1 << 20) for _ in range(8)]
    threads = [
        threading.Thread(target=c.put, args=(SHA, N_TOKENS, N_TOKENS, N_EMBD, embedding())) for c in caches
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.name for p in caches[0].folder.iterdir()] == [f"{SHA}-{N_TOKENS}.emb"]
    assert np.array_equal(caches[0].get(SHA, N_TOKENS, N_TOKENS, N_EMBD), embedding())


# -- the real llama.cpp path ---------------------------------------------------------------------------


def answer(backend, image) -> tuple[str, Finished]:
    request = GenerationRequest(messages=[Message.user("describe", [image])], temperature=0.0, max_tokens=12)
    text, finished = "", None
    for chunk in backend.generate(request):
        if isinstance(chunk, TextDelta):
            text += chunk.text
        elif isinstance(chunk, Finished):
            finished = chunk
    return text, finished


@pytest.mark.llama
def test_a_new_backend_takes_the_embedding_from_disk_and_answers_the_same(make_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = image_part(size=(48, 40), color=(10, 200, 30))
    fresh_text, fresh = answer(make_backend(n_ctx=1024), image)  # the disk tier off
    assert fresh.usage.images_encoded == 1
    first_text, first = answer(make_backend(n_ctx=1024, embedding_cache_mb=64), image)  # encodes, writes it
    assert first.usage.images_encoded == 1 and list((tmp_path / "cache").glob("**/*.emb"))
    second_text, second = answer(make_backend(n_ctx=1024, embedding_cache_mb=64), image)  # memory cache empty
    assert second.usage.images_encoded == 0 and second.usage.images_cached == 1
    assert fresh_text == first_text == second_text


@pytest.mark.llama
@pytest.mark.subprocess
def test_a_follow_up_in_a_new_process_encodes_no_image(demo_pair, cli_env, blue_png):
    text, mmproj = demo_pair
    common = ["--json", "--no-tools", "-m", str(text), "--mmproj", str(mmproj), "--max-tokens", "4"]
    first = run_cli("ask", *common, "-a", str(blue_png), "what is this?", env=cli_env)
    assert first.returncode == 0, first.stderr
    second = run_cli("ask", *common, "-c", "and the colour?", env=cli_env)
    assert second.returncode == 0, second.stderr
    done = [json.loads(line) for line in second.stdout.splitlines()][-1]
    assert done["type"] == "done" and done["usage"]["images_encoded"] == 0 and done["usage"]["images_cached"] == 1
    off = run_cli("ask", *common, "-c", "again?", env={**cli_env, "VISION_AGENT_MODEL__EMBEDDING_CACHE_MB": "0"})
    assert json.loads(off.stdout.splitlines()[-1])["usage"]["images_encoded"] == 1


# -- conversation KV states on disk -----------------------------------------------------------------------

IDENTITY = bytes(range(32))
NAME = f"{'ef' * 32}:16"
STATE_KEYS = [1, 2, 3, *(-((1 << 24) + offset) for offset in range(16)), 7, 8]
PAYLOAD = os.urandom(3000)


def states(tmp_path, identity: bytes = IDENTITY, max_bytes: int = 1 << 20) -> DiskStates:
    return DiskStates(tmp_path / "states", lambda: identity, max_bytes, max_positions=4096)


def saved_path(tmp_path, cid: str = "conv1") -> Path:
    return states(tmp_path).path(cid)


def test_a_state_comes_back_with_what_it_holds(tmp_path):
    assert states(tmp_path).save("conv1", [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
    reader = states(tmp_path)
    saved = reader.peek("conv1")
    assert saved.names == [NAME] and saved.keys == STATE_KEYS
    assert bytes(reader.load(saved)) == PAYLOAD
    assert reader.peek("conv2") is None


def test_a_state_of_another_model_is_never_used(tmp_path):
    states(tmp_path).save("conv1", [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
    path = saved_path(tmp_path)
    # Another model looks under another name; a file renamed to it (or made for it) is refused and removed.
    other = states(tmp_path, identity=b"\x01" * 32)
    path.rename(other.path("conv1"))
    assert other.peek("conv1") is None and not other.path("conv1").exists()


def flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def bad_image_index(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = STATE_HEADER.size + STATE_IMAGE.size + 3 * 8  # the first image key
    data[start : start + 8] = (-(5 << 24)).to_bytes(8, "little", signed=True)  # image 5 of 1
    path.write_bytes(bytes(data))


def huge_key_count(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8 + 32 + 4 : 8 + 32 + 8] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))


STATE_TAMPERS = [
    tamper_truncated,
    tamper_longer,
    tamper_garbage,
    tamper_empty,
    tamper_directory,
    tamper_fifo,
    tamper_symlink,
    flip_payload_byte,
    bad_image_index,
    huge_key_count,
]


@pytest.mark.parametrize("tamper", STATE_TAMPERS, ids=lambda f: f.__name__.removeprefix("tamper_"))
def test_a_damaged_state_file_is_removed_and_never_used(tmp_path, tamper):
    store = states(tmp_path)
    store.save("conv1", [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
    path = saved_path(tmp_path)
    tamper(path)
    done = []

    def use():
        saved = store.peek("conv1")
        done.append(None if saved is None else store.load(saved))

    worker = threading.Thread(target=use)
    worker.start()
    worker.join(5)
    assert done == [None], "a FIFO or anything else must not block or be used"
    assert not path.exists() and not path.is_symlink()


def test_a_conversation_id_that_is_not_a_plain_name_is_never_a_path(tmp_path):
    store = states(tmp_path)
    for cid in ("../../escape", "a/b", "", "x" * 65, "bad\n"):
        assert store.save(cid, [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD)) is False
        assert store.peek(cid) is None
    assert not list(tmp_path.glob("**/*escape*"))


def test_states_are_bounded_least_recently_used_first(tmp_path):
    one = len(PAYLOAD) + 1000  # a state file with its header and keys is under this
    store = states(tmp_path, max_bytes=2 * one)
    for index, cid in enumerate(("a", "b")):
        store.save(cid, [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
        os.utime(store.path(cid), ns=(10**18 + index, 10**18 + index))
    store.load(store.peek("a"))  # used: now the most recent
    store.save("c", [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
    assert [cid for cid in "abc" if store.path(cid).exists()] == ["a", "c"]
    assert store.save("d", [NAME], STATE_KEYS, os.urandom(3 * one), 3 * one) is False  # alone over the bound


def test_a_state_replaced_between_peek_and_load_is_not_used(tmp_path):
    store = states(tmp_path)
    store.save("conv1", [NAME], STATE_KEYS, PAYLOAD, len(PAYLOAD))
    saved = store.peek("conv1")
    store.save("conv1", [NAME], [*STATE_KEYS, 9], PAYLOAD, len(PAYLOAD))  # another process, a turn later
    assert store.load(saved) is None
    assert store.peek("conv1").keys == [*STATE_KEYS, 9]  # and the newer file is kept


def greedy(backend, messages, cid=None) -> tuple[str, Finished]:
    request = GenerationRequest(messages=messages, temperature=0.0, max_tokens=12, conversation_id=cid)
    text, finished = "", None
    for chunk in backend.generate(request):
        if isinstance(chunk, TextDelta):
            text += chunk.text
        elif isinstance(chunk, Finished):
            finished = chunk
    return text, finished


@pytest.fixture
def two_turns():
    image = image_part(size=(48, 40), color=(200, 30, 30))
    first = [Message.system("You describe images."), Message.user("What is in this picture?", [image])]
    return first, lambda answer: [*first, Message.assistant(answer), Message.user("And what colour is it?")]


@pytest.mark.llama
def test_a_new_backend_restores_the_saved_state_and_evaluates_only_the_new_turn(
    make_backend, tmp_path, monkeypatch, two_turns
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, follow_up = two_turns
    cid = "0123456789abcdef0123456789abcdef"
    writer = make_backend(n_ctx=1024, save_state=True)
    answer1, turn1 = greedy(writer, first, cid)
    assert writer.finish_conversation(cid) is True
    assert len(list((tmp_path / "cache").glob("*/states/*.kvs"))) == 1
    writer.close()

    reference_text, reference = greedy(make_backend(n_ctx=1024), follow_up(answer1))  # nothing saved, no cache
    text, turn2 = greedy(make_backend(n_ctx=1024, save_state=True), follow_up(answer1), cid)
    assert text == reference_text
    assert turn2.usage.prompt_tokens == reference.usage.prompt_tokens
    # Turn 1's prompt (with its image) came from the file: only the answer's and the new turn's tokens ran.
    assert turn2.usage.cached_tokens >= turn1.usage.prompt_tokens - 1
    assert turn2.usage.images_encoded == 0 and reference.usage.images_encoded == 1
    # Evaluated: at most what follows turn 1's prompt (its answer, re-tokenised from text here, and the question).
    assert (
        turn2.usage.prompt_tokens - turn2.usage.cached_tokens
        <= reference.usage.prompt_tokens - turn1.usage.prompt_tokens + 1
    )

    other = make_backend(n_ctx=1024, save_state=True)  # another conversation id: not its state
    assert greedy(other, follow_up(answer1), "ffff" * 8)[1].usage.cached_tokens == 0


@pytest.mark.llama
def test_a_tampered_state_file_is_ignored_and_the_answer_is_the_same(make_backend, tmp_path, monkeypatch, two_turns):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, follow_up = two_turns
    cid = "tampered"
    writer = make_backend(n_ctx=1024, save_state=True)
    answer1, _ = greedy(writer, first, cid)
    assert writer.finish_conversation(cid)
    writer.close()
    (path,) = (tmp_path / "cache").glob("*/states/*.kvs")
    flip_payload_byte(path)
    reference_text, _ = greedy(make_backend(n_ctx=1024), follow_up(answer1))
    text, turn2 = greedy(make_backend(n_ctx=1024, save_state=True), follow_up(answer1), cid)
    assert text == reference_text and turn2.usage.cached_tokens == 0 and turn2.usage.images_encoded == 1
    assert not path.exists()


@pytest.mark.llama
def test_save_state_off_writes_nothing_and_an_unwritable_cache_still_answers(make_backend, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # nothing can be created below a file
    image = image_part(size=(48, 40), color=(10, 200, 30))
    backend = make_backend(n_ctx=1024, save_state=True, embedding_cache_mb=64)
    text, finished = greedy(backend, [Message.user("describe", [image])], "c1")
    assert finished.reason in ("stop", "length") and finished.usage.images_encoded == 1
    assert backend.finish_conversation("c1") is False
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    off = make_backend(n_ctx=1024)
    greedy(off, [Message.user("describe", [image])], "c1")
    assert off.finish_conversation("c1") is False and not (tmp_path / "cache").exists()


@pytest.mark.llama
@pytest.mark.subprocess
def test_with_save_state_a_follow_up_process_evaluates_only_the_new_turn(demo_pair, cli_env, tmp_path, blue_png):
    text, mmproj = demo_pair
    common = ["--json", "--no-tools", "--temperature", "0", "-m", str(text), "--mmproj", str(mmproj)]
    common += ["--max-tokens", "6"]

    def conversation(env):
        first = run_cli("ask", *common, "-a", str(blue_png), "what is this?", env=env)
        assert first.returncode == 0, first.stderr
        second = run_cli("ask", *common, "-c", "and the colour?", env=env)
        assert second.returncode == 0, second.stderr
        events = [json.loads(line) for line in second.stdout.splitlines()]
        answer = [e["text"] for e in events if e["type"] == "answer"]
        return answer, events[-1]["usage"]

    saving = {**cli_env, "VISION_AGENT_MODEL__SAVE_STATE": "1"}
    answer, usage = conversation(saving)
    assert list(Path(saving["XDG_CACHE_HOME"]).glob("*/states/*.kvs")), "the session saved no state"
    plain = {**cli_env, "XDG_CACHE_HOME": str(tmp_path / "cache2"), "XDG_DATA_HOME": str(tmp_path / "data2")}
    plain["VISION_AGENT_MODEL__EMBEDDING_CACHE_MB"] = "0"
    plain_answer, plain_usage = conversation(plain)
    assert answer == plain_answer
    assert plain_usage["cached_tokens"] == 0 and plain_usage["images_encoded"] == 1
    assert usage["images_encoded"] == 0 and usage["cached_tokens"] > plain_usage["prompt_tokens"] // 2
