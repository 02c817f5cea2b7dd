import logging

import pytest

from workers.quiet import quiet_logger


@pytest.mark.parametrize("name", ["adaray.test.quiet", None])  # a named logger, and the root logger
def test_quiet_logger_drops_warnings_inside_and_restores_the_level(caplog, name):
    log = logging.getLogger(name)
    caplog.set_level(logging.INFO, logger=name)
    with quiet_logger(name):
        log.warning("dropped")
        log.error("kept")
    log.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["kept", "after"]
    assert log.level == logging.INFO
