"""mcp2p.multicast's IPv6 side: socket-option structs, the node's IPv6
address from /proc/net/if_inet6, and the joins on a real socket (on ``lo``:
membership only, no datagram is sent)."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p import multicast
from mcp2p.config import config_from_string
from mcp2p.core.groups import random_group

ip = ipaddress.ip_address

IF_INET6 = """\
fe80000000000000a8bbccfffedd0001 02 40 20 80     eth0
fd770000000000010000000000000002 02 40 00 40     eth0
fd770000000000020000000000000002 02 40 00 20     eth0
fd770000000000030000000000000002 02 40 00 80     eth0
fd770000000000040000000000000002 02 40 00 80     eth0
fd770000000000050000000000000002 03 40 00 80     eth1
00000000000000000000000000000001 01 80 10 80       lo
"""


def test_the_first_usable_global_address_of_the_interface() -> None:
    # link-local, tentative (0x40) and deprecated (0x20) ones are skipped; order kept
    assert multicast.parse_if_inet6(IF_INET6, "eth0") == ["fd77:0:0:3::2", "fd77:0:0:4::2"]
    assert multicast.parse_if_inet6(IF_INET6, "eth1") == ["fd77:0:0:5::2"]
    assert multicast.parse_if_inet6(IF_INET6, "lo") == []  # host scope
    assert multicast.parse_if_inet6(IF_INET6, "eth") == []


@given(st.text(max_size=300))
def test_hostile_if_inet6_text_never_crashes(text: str) -> None:
    for address in multicast.parse_if_inet6(text + "\n" + IF_INET6, "eth1"):
        assert ip(address).version == 6


def test_an_interface_without_a_global_address_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "if_inet6"
    path.write_text(IF_INET6)
    assert multicast.interface_address6("eth0", str(path)) == "fd77:0:0:3::2"
    with pytest.raises(multicast.InterfaceError, match=r"\[node\] interface6 = lo: .*global"):
        multicast.interface_address6("lo", str(path))
    with pytest.raises(multicast.InterfaceError, match="cannot read"):
        multicast.interface_address6("eth0", str(tmp_path / "missing"))


def test_group_source_req_is_linuxs_struct() -> None:
    group, source = ip("ff3e::1:2"), ip("fd77::7")
    req = multicast.group_source_req(5, group, source)
    assert len(req) == 4 + 4 + 128 + 128  # u32, padding to 8, two sockaddr_storage
    assert struct.unpack_from("@I", req, 0) == (5,)
    for offset, addr in ((8, group), (136, source)):
        family, port, flow = struct.unpack_from("@H", req, offset) + struct.unpack_from(
            "!HI", req, offset + 2
        )
        assert (family, port, flow) == (socket.AF_INET6, 0, 0)
        assert req[offset + 8 : offset + 24] == addr.packed
        assert req[offset + 24 : offset + 128] == bytes(104)  # scope id 0, then padding


def test_ipv6_mreq_holds_an_index_and_ip_mreq_source_linuxs_order() -> None:
    assert multicast.ipv6_mreq(ip("ff15::77"), 3) == ip("ff15::77").packed + struct.pack("@I", 3)
    req = multicast.ip_mreq_source(ip("232.1.2.3"), "10.0.0.1", ip("10.0.0.9"))
    assert req == bytes([232, 1, 2, 3, 10, 0, 0, 1, 10, 0, 0, 9])


class _Port:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


def _random_group(net: str) -> Any:
    return random_group([ipaddress.ip_network(net)], 6, random.Random())


def test_the_kernel_takes_the_ipv6_joins() -> None:
    """The structs are what the kernel wants: the joins show in /proc."""
    group, source = _random_group("ff3e::/32"), ip("::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        multicast.join_source(_Port(s), group, source, "lo")
        filters = Path("/proc/net/mcfilter6").read_text()
        assert f"{group.packed.hex()} {source.packed.hex()}" in filters
    asm = _random_group("ff15::/16")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        multicast.join(_Port(s), asm, "lo")
        assert asm.packed.hex() in Path("/proc/net/igmp6").read_text()
        multicast.leave(_Port(s), asm, "lo")
        assert asm.packed.hex() not in Path("/proc/net/igmp6").read_text()


def test_joins_name_what_is_wrong() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        with pytest.raises(multicast.InterfaceError, match=r"\[node\] interface6"):
            multicast.join(_Port(s), ip("ff15::77"), "no-such-if0")
        with pytest.raises(ValueError, match="different IP versions"):
            multicast.join_source(_Port(s), ip("ff3e::1"), ip("10.0.0.1"), "lo")


def test_the_default_pools_give_ipv6_groups_of_the_right_kind(tmp_path: Path) -> None:
    serving = config_from_string("", str(tmp_path)).serving
    rng = random.Random(14)
    for _ in range(200):
        ssm = random_group(serving.ssm_pool, 6, rng)
        asm = random_group(serving.asm_pool, 6, rng)
        assert ssm in ipaddress.ip_network("ff3e::/32") and ssm != ip("ff3e::")
        assert asm in ipaddress.ip_network("ff15::/16") and asm != ip("ff15::")
        assert ssm.is_multicast and asm.is_multicast
