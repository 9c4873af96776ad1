"""The daemon's own log: today's in logs/daemon.log, each earlier day in a dated file."""

from __future__ import annotations

import logging
import re
import time

import pytest

from honed.daemon.lifecycle import setup_daemon_logging


@pytest.fixture
def root_logger():
    """The root logger, put back as it was: setup_daemon_logging changes it for the process."""
    root = logging.getLogger()
    level, handlers = root.level, {h: h.level for h in root.handlers}
    yield root
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler, handler_level in handlers.items():
        handler.setLevel(handler_level)
    root.setLevel(level)


def test_at_midnight_the_days_log_is_renamed_with_its_date(tmp_path, root_logger):
    handler = setup_daemon_logging(tmp_path / "logs", to_console=True)
    log = logging.getLogger("honed.daemon.test")
    log.info("before midnight")
    handler.rolloverAt = int(time.time())  # as if midnight had just passed
    log.info("after midnight")
    handler.flush()
    dated = sorted(p.name for p in (tmp_path / "logs").iterdir() if p.name != "daemon.log")
    assert len(dated) == 1 and re.fullmatch(r"daemon-\d{4}-\d{2}-\d{2}\.log", dated[0])
    assert "before midnight" in (tmp_path / "logs" / dated[0]).read_text()
    today = (tmp_path / "logs" / "daemon.log").read_text()
    assert "after midnight" in today and "before midnight" not in today
