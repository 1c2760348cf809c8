"""Each front end chooses where diagnostics go: a full-screen app logs to a file, never over its screen."""

from __future__ import annotations

import logging

from vision_agent.frontends.logging_setup import configure_logging


def test_a_file_destination_takes_every_record_and_stderr_none(tmp_path, capsys):
    log_file = tmp_path / "logs" / "vision-agent.log"
    try:
        configure_logging(False, log_file)
        logging.getLogger("vision_agent.test").warning("a plugin said \x1b]52;c;aGk=\x07 hello")
        for handler in logging.getLogger().handlers:
            handler.flush()
        assert capsys.readouterr().err == ""
        written = log_file.read_text()
        assert "hello" in written and "\x1b" not in written  # shown, never obeyed
    finally:
        configure_logging(False)


def test_the_default_is_stderr(capsys):
    configure_logging(False)
    logging.getLogger("vision_agent.test").warning("on stderr")
    assert capsys.readouterr().err == "vision-agent: on stderr\n"
