"""Wake-on-LAN (proxy/wol.py): the magic packet's bytes, sent as one UDP datagram."""

from __future__ import annotations

import socket

import pytest

from proxy.wol import magic_packet, wake


def test_the_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    packet = magic_packet("01:23:45:67:89:AB")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("0123456789ab") * 16
    assert magic_packet("01-23-45-67-89-ab") == packet == magic_packet("0123456789ab")
    with pytest.raises(ValueError):
        magic_packet("01:23:45:67:89")


async def test_wake_sends_the_packet_to_the_address_and_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        await wake("aa:bb:cc:dd:ee:ff", "127.0.0.1", port)
        data, _ = sock.recvfrom(1024)
    assert data == magic_packet("aa:bb:cc:dd:ee:ff")
