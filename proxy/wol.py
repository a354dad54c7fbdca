"""Wake-on-LAN: the magic packet that wakes a sleeping GPU PC.

The packet is six ``0xFF`` bytes and the host's MAC address sixteen times (102 bytes),
sent as one UDP datagram to the LAN's broadcast address, port 9 by default
(`proxy.catalogue.Host`: ``mac``, ``broadcast``, ``wol_port``). The network card of a
suspended PC with Wake-on-LAN enabled (``ethtool -s IFACE wol g``; docs/hosts.md) powers
it on when it sees its own address so repeated. Nothing answers: the proxy learns the
host is awake when its manager's event stream connects again.
"""

from __future__ import annotations

import asyncio
import re
import socket

PORT = 9
"""The discard port: what most tools send the magic packet to."""
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet for `mac` (``aa:bb:cc:dd:ee:ff``, ``-`` or no separator).
    Raises ValueError for anything else."""
    if not _MAC.match(mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    return b"\xff" * 6 + raw * 16


def send_magic_packet(mac: str, broadcast: str = "255.255.255.255", port: int = PORT) -> None:
    """Send one magic packet for `mac` to `broadcast`:`port` (UDP, broadcast allowed).
    Blocks briefly (one datagram); raises OSError when it cannot be sent."""
    packet = magic_packet(mac)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(packet, (broadcast, port))


async def wake(mac: str, broadcast: str = "255.255.255.255", port: int = PORT) -> None:
    """`send_magic_packet` from async code (in a thread). Raises OSError."""
    await asyncio.to_thread(send_magic_packet, mac, broadcast, port)
