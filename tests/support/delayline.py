"""A user-space delay line between two TUN devices: a network path whose delay we set.

This machine's kernel has no ``tc netem``, and a server cannot delay a TCP handshake
from user space (the kernel answers the SYN before ``accept``). So a test host lives in
a network namespace joined to ours only through two TUN devices, and this program
carries every packet between them, holding SYN-ACKs from chosen server ports for a set
time: exactly the extra TCP connect time a far-away server would add.

The lab's own forwarder, :mod:`popwatch_lab.wire`, grows this into every path of a
world: delay by region, jitter, loss. Run by :mod:`web` (``WebLab``); by hand::

    python tests/support/delayline.py --client-dev pwc0 --netns pwlab --server-dev pws0 \\
        --synack-delay 9443=0.05
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time

from popwatch_lab.netns import open_tun


def synack_sport(pkt: bytes) -> int | None:
    """The source port of a TCP SYN-ACK (IPv4 or IPv6 without extension headers)."""
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4 and len(pkt) >= 20 and pkt[9] == 6:
        tcp = (pkt[0] & 0x0F) * 4
    elif version == 6 and len(pkt) >= 40 and pkt[6] == 6:
        tcp = 40
    else:
        return None
    if len(pkt) < tcp + 14:
        return None
    flags = pkt[tcp + 13]
    if flags & 0x12 == 0x12:  # SYN and ACK
        return int(struct.unpack_from("!H", pkt, tcp)[0])
    return None


def precise_sleep_until(deadline: float) -> None:
    """Busy-wait the last stretch: timers alone wake up to a millisecond late."""
    while time.perf_counter() < deadline:
        pass


class Relay:
    def __init__(self, client_fd: int, server_fd: int, delays: dict[int, float]) -> None:
        self.client_fd = client_fd
        self.server_fd = server_fd
        self.delays = delays
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(client_fd, self.pump, client_fd, server_fd, False)
        self.loop.add_reader(server_fd, self.pump, server_fd, client_fd, True)

    def pump(self, src: int, dst: int, from_server: bool) -> None:
        while True:
            try:
                pkt = os.read(src, 65535)
            except BlockingIOError:
                return
            delay = self.delays.get(synack_sport(pkt) or -1) if from_server else None
            if delay:
                due = time.perf_counter() + delay
                self.loop.call_later(max(0.0, delay - 0.002), self.send_at, dst, pkt, due)
            else:
                os.write(dst, pkt)

    def send_at(self, dst: int, pkt: bytes, due: float) -> None:
        precise_sleep_until(due)
        os.write(dst, pkt)


async def main_async(args: argparse.Namespace) -> None:
    client_fd = open_tun(args.client_dev)
    server_fd = open_tun(args.server_dev, args.netns)  # opened from inside the test host
    delays = {}
    for spec in args.synack_delay:
        port, _, seconds = spec.partition("=")
        delays[int(port)] = float(seconds)
    Relay(client_fd, server_fd, delays)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--client-dev", required=True, help="TUN device on our side")
    ap.add_argument("--netns", required=True, help="network namespace of the test host")
    ap.add_argument("--server-dev", required=True, help="TUN device in that namespace")
    ap.add_argument(
        "--synack-delay",
        action="append",
        default=[],
        metavar="PORT=SECONDS",
        help="hold SYN-ACKs from this server port for this long (repeatable)",
    )
    args = ap.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
