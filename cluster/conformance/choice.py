"""Which driver `conformance run --initiator NAME` means."""

from __future__ import annotations

from cluster.conformance.drivers import (
    CommandDriver,
    Driver,
    LibiscsiDriver,
    ProjectDriver,
    QemuDriver,
)
from cluster.conformance.guest_driver import OpenIscsiDriver

DRIVER_NAMES = ("project", "libiscsi", "qemu", "open-iscsi", "command")


def driver_named(name: str, command: str | None = None) -> Driver:
    """The driver called ``name``; ``command`` is the template of the command driver."""
    if (name == "command") != bool(command):
        raise ValueError("--command TEMPLATE goes with --initiator command, and only with it")
    if command:
        return CommandDriver(command)
    drivers: dict[str, Driver] = {
        "project": ProjectDriver(),
        "libiscsi": LibiscsiDriver(),
        "qemu": QemuDriver(),
        "open-iscsi": OpenIscsiDriver(),
    }
    if name not in drivers:
        raise ValueError(f"unknown initiator {name!r} (one of {', '.join(DRIVER_NAMES)})")
    return drivers[name]
