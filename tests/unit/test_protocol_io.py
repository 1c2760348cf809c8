"""The stdio of the protocol servers: input lines capped and split exactly; stdout claimed so that nothing but
protocol lines reaches it, whoever writes to fd 1 (print, os.write, a child process, llama.cpp)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest

from vision_agent.frontends.protocol_io import Oversized, json_line, read_lines


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes per read, as a pipe may."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step = data, step

    def readable(self):
        return True

    def read1(self, _size=-1):
        piece, self.data = self.data[: self.step], self.data[self.step :]
        return piece


@pytest.mark.parametrize("step", [1, 3, 1 << 16])
def test_lines_are_split_capped_and_the_next_line_survives(step):
    big = b"x" * 5000
    data = b'{"a":1}\r\n\n' + big + b"\n" + b"y" * 99 + b"\n" + big + b"tail-without-newline-" + big
    lines = list(read_lines(Trickle(data, step), max_bytes=100))
    assert lines == [b'{"a":1}', b"", Oversized(5000), b"y" * 99, Oversized(len(big) * 2 + 21)]


def test_a_last_line_without_newline_and_an_empty_stream():
    assert list(read_lines(io.BytesIO(b"one\ntwo"), 10)) == [b"one", b"two"]
    assert list(read_lines(io.BytesIO(b""), 10)) == []


def test_json_lines_never_hold_a_raw_line_break_or_a_surrogate():
    line = json_line({"text": "a\u2028b\x85c\u2029d\ud800", "n": 1})
    assert "\u2028" not in line and "\x85" not in line and len(line.splitlines()) == 1
    assert json.loads(line) == {"text": "a\u2028b\x85c\u2029d\ufffd", "n": 1}


CLAIMED = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    from vision_agent.frontends.protocol_io import ProtocolOut
    out = ProtocolOut.claim()
    print("noise from print")
    os.write(1, b"noise from fd 1\\n")
    subprocess.run([sys.executable, "-c", "print('noise from a child')"], check=True)
    def many(n):
        for i in range(200):
            out.write_json({"thread": n, "i": i, "pad": "z" * 5000})
    threads = [threading.Thread(target=many, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    out.close()
    print("after close", out.write_line("lost"))
    """
)


@pytest.mark.subprocess
def test_claimed_stdout_carries_only_whole_protocol_lines():
    result = subprocess.run([sys.executable, "-c", CLAIMED], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 800 and all(json.loads(line)["pad"] == "z" * 5000 for line in lines)
    assert sorted((json.loads(x)["thread"], json.loads(x)["i"]) for x in lines) == [
        (n, i) for n in range(4) for i in range(200)
    ]
    for noise in (b"noise from print", b"noise from fd 1", b"noise from a child", b"after close False"):
        assert noise in result.stderr


@pytest.mark.subprocess
def test_a_reader_that_went_away_is_seen_not_raised():
    code = textwrap.dedent(
        """
        import os, sys
        from vision_agent.frontends.protocol_io import ProtocolOut
        out = ProtocolOut.claim()
        ok = [out.write_line("x" * 100000) for _ in range(50)]
        print("results", ok[0], ok[-1], out.closed, file=sys.stderr)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the client is gone before the first line
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert b"results False False True" in err
