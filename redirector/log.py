"""The redirector's log, in the format of AHV's iscsi_redirector log.

Operational scripts grep these lines, so their wording is fixed::

  2017-08-18 19:25:21,733 - INFO - Portal 192.168.5.254:3261 is up
  2017-08-18 19:25:40,101 - WARNING - Portal 192.168.5.254:3261 is down
  ... - INFO - Redirecting target iqn.2010-06.com.nutanix:vmdisk-1 to 10.0.0.8:3261
"""

from __future__ import annotations

import logging
from pathlib import Path

from iscsicore.portal import Portal

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
LOGGER_NAME = "iscsi_redirector"


def redirector_logger(log_file: Path | None = None) -> logging.Logger:
    """The redirector's logger, writing AHV-format lines to ``log_file`` (or stderr)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file is not None else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    return logger


def log_portal_up(logger: logging.Logger, host: str, port: int) -> None:
    logger.info("Portal %s is up", Portal(host, port).host_port)


def log_portal_down(logger: logging.Logger, host: str, port: int) -> None:
    logger.warning("Portal %s is down", Portal(host, port).host_port)


def log_redirect(logger: logging.Logger, target_name: str, host: str, port: int) -> None:
    logger.info("Redirecting target %s to %s", target_name, Portal(host, port).host_port)
