"""A fake multicast network on a Clock, for protocol tests.

Each ``FakeReactor`` is one host of a ``FakeNetwork``; hosts are placed at
hop distances from each other. A datagram sent to a group reaches every
port bound to that port number whose socket joined the group, when the
sender's multicast TTL is at least the hop distance (0 for the sender's own
host: multicast loops back). Delivery takes ``latency`` seconds per hop on
the shared Clock. The fake socket understands the socket options that
``mcp2p.multicast`` sets, so the code under test is the real code.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.task import Clock


class FakeSocket:
    def __init__(self, family: int) -> None:
        self.family = family
        self.options: dict[tuple[int, int], Any] = {}
        self.groups: set[str] = set()
        self.ttl = 1

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.options[(level, option)] = value
        if level == socket.IPPROTO_IP and option == socket.IP_ADD_MEMBERSHIP:
            self.groups.add(socket.inet_ntoa(value[:4]))
        elif level == socket.IPPROTO_IP and option == socket.IP_DROP_MEMBERSHIP:
            self.groups.discard(socket.inet_ntoa(value[:4]))
        elif level == socket.IPPROTO_IP and option == socket.IP_MULTICAST_TTL:
            self.ttl = value
        elif level == socket.IPPROTO_IPV6 and option == socket.IPV6_JOIN_GROUP:
            self.groups.add(str(ipaddress.IPv6Address(value[:16])))
        elif level == socket.IPPROTO_IPV6 and option == socket.IPV6_MULTICAST_HOPS:
            self.ttl = value

    def getsockopt(self, level: int, option: int) -> Any:
        return self.options.get((level, option), 0)


class _Host:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.type = host, port, "UDP"


class FakePort:
    def __init__(self, reactor: FakeReactor, port: int, protocol: Any, family: int) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.socket = FakeSocket(family)
        self.connected = True
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def getHandle(self) -> FakeSocket:
        return self.socket

    def getHost(self) -> _Host:
        return _Host(self.reactor.address, self.port)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.connected, "write on a closed port"
        self.written.append((data, addr))
        self.reactor.network.send(self, data, addr)

    def stopListening(self) -> None:
        self.connected = False
        self.reactor.network.ports.remove(self)
        self.protocol.doStop()


class FakeReactor:
    """One host: Clock methods come from the network's shared Clock."""

    def __init__(self, network: FakeNetwork, address: str) -> None:
        self.network = network
        self.address = address

    def seconds(self) -> float:
        return self.network.clock.seconds()

    def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        return self.network.clock.callLater(delay, f, *a, **kw)

    def getDelayedCalls(self) -> list[Any]:
        return self.network.clock.getDelayedCalls()

    def listenMulticast(
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> FakePort:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        if port == 0:
            self.network.next_port += 1
            port = self.network.next_port
        p = FakePort(self, port, protocol, family)
        self.network.ports.append(p)
        protocol.makeConnection(p)
        return p

    listenUDP = listenMulticast


class FakeNetwork:
    """Hosts at hop distances; ``distance[a][b]`` hops between hosts a and b."""

    def __init__(self, latency: float = 0.001) -> None:
        self.clock = Clock()
        self.latency = latency
        self.ports: list[FakePort] = []
        self.positions: dict[str, int] = {}
        self.next_port = 40000
        self.sent: list[tuple[str, bytes, tuple[str, int], int]] = []
        # (source address, datagram, destination) -> True to lose it on the way
        self.drop: Any = None

    def host(self, address: str, position: int = 0) -> FakeReactor:
        """A host on a chain: hosts at positions p and q are |p - q| + 1 hops apart
        (1 = same link), or 0 for the same host."""
        self.positions[address] = position
        return FakeReactor(self, address)

    def distance(self, a: str, b: str) -> int:
        if a == b:
            return 0
        return abs(self.positions[a] - self.positions[b]) + 1

    def send(self, sender: FakePort, data: bytes, addr: tuple[str, int]) -> None:
        src = sender.reactor.address
        ttl = sender.socket.ttl
        self.sent.append((src, data, addr, ttl))
        if self.drop is not None and self.drop(src, data, addr):
            return
        group = ipaddress.ip_address(addr[0])
        for p in list(self.ports):
            if p.port != addr[1]:
                continue
            dst = p.reactor.address
            if group.is_multicast:
                if addr[0] not in p.socket.groups:
                    continue
                hops = self.distance(src, dst)
                if hops > ttl:
                    continue
            elif dst != addr[0]:
                continue
            else:
                hops = self.distance(src, dst)
            self.clock.callLater(
                self.latency * max(hops, 1), self._deliver, p, data, (src, sender.port)
            )

    def _deliver(self, port: FakePort, data: bytes, source: tuple[str, int]) -> None:
        if port.connected:
            port.protocol.datagramReceived(data, source)

    def run(self, seconds: float, step: float = 0.001) -> None:
        """Advance the Clock in small steps so chained calls happen in order."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-12:
            self.clock.advance(min(step, end - self.clock.seconds()))
