"""Hold N logged-in sessions open (one per vDisk URL) until killed; print ``ready N`` once
they are all up. The memory benchmark measures the target's RSS meanwhile.

    python -m benchmarks.idle_connections URL_TEMPLATE COUNT   # URL_TEMPLATE has {disk}
"""

from __future__ import annotations

import argparse
import math
import sys

import trio

from initiator.device import BlockDevice
from initiator.session import SessionConfig

#: logins in flight at once: enough to be quick, few enough not to trip login timeouts
LOGIN_CONCURRENCY = 32


async def hold_sessions(url_template: str, count: int) -> None:
    config = SessionConfig(nop_interval=0)
    logins = trio.Semaphore(LOGIN_CONCURRENCY)
    opened = 0
    all_open = trio.Event()

    async def hold(disk: int) -> None:
        nonlocal opened
        async with logins:
            opening = BlockDevice.open(url_template.format(disk=disk), config)
            device = await opening.__aenter__()
        opened += 1
        if opened == count:
            all_open.set()
        try:
            await trio.sleep(math.inf)
        finally:
            with trio.CancelScope(shield=True):
                await opening.__aexit__(None, None, None)
            del device

    async with trio.open_nursery() as nursery:
        for disk in range(count):
            nursery.start_soon(hold, disk)
        await all_open.wait()
        print(f"ready {count}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url_template")
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    trio.run(hold_sessions, args.url_template, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
