"""Log lines keep the wording and layout of AHV's iscsi_redirector log."""

from __future__ import annotations

import re
from pathlib import Path

from redirector.log import log_portal_down, log_portal_up, log_redirect, redirector_logger

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_lines_match_the_ahv_format(tmp_path: Path) -> None:
    log_file = tmp_path / "iscsi_redirector.log"
    logger = redirector_logger(log_file)
    log_portal_up(logger, "127.0.1.2", 3261)
    log_portal_down(logger, "::1", 3261)
    log_redirect(logger, "iqn.2010-06.com.nutanix:vmdisk-7", "127.0.2.2", 3261)
    for handler in logger.handlers:
        handler.flush()
    lines = log_file.read_text().splitlines()
    assert re.fullmatch(rf"{STAMP} - INFO - Portal 127\.0\.1\.2:3261 is up", lines[0])
    assert re.fullmatch(rf"{STAMP} - WARNING - Portal \[::1\]:3261 is down", lines[1])
    assert re.fullmatch(
        rf"{STAMP} - INFO - Redirecting target iqn\.2010-06\.com\.nutanix:vmdisk-7 "
        r"to 127\.0\.2\.2:3261",
        lines[2],
    )
