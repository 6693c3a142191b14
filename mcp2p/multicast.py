"""Multicast sockets through Twisted, with the platform traps handled here once.

Twisted's ``listenMulticast`` covers IPv4 any-source multicast. For IPv6 its
``joinGroup`` packs an address where Linux wants an interface index, and
``setTTL`` only sets the IPv4 option; source-specific joins are missing
altogether. These helpers set the socket options on ``port.getHandle()``
(DESIGN.md section 9).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
from typing import Any

from twisted.internet.interfaces import IListeningPort

from mcp2p.errors import ConfigError
from mcp2p.wire.types import IPAddress

# Linux values missing from Python 3.11's socket module.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
IP_DROP_SOURCE_MEMBERSHIP = getattr(socket, "IP_DROP_SOURCE_MEMBERSHIP", 40)
MCAST_JOIN_SOURCE_GROUP = getattr(socket, "MCAST_JOIN_SOURCE_GROUP", 46)
MCAST_LEAVE_SOURCE_GROUP = getattr(socket, "MCAST_LEAVE_SOURCE_GROUP", 47)
IPV6_MULTICAST_ALL = getattr(socket, "IPV6_MULTICAST_ALL", 29)
IF_INET6 = "/proc/net/if_inet6"  # Linux: one line per IPv6 address of the host
# if_inet6 flags that make an address unusable as a source (IFA_F_*)
_UNUSABLE6 = 0x08 | 0x20 | 0x40  # DADFAILED, DEPRECATED, TENTATIVE


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def port_socket(port: Any) -> Any:
    """``port``'s socket where it has a real one (a UDP socket, on Linux),
    else None."""
    handle = getattr(port, "getHandle", None)
    sock = handle() if handle is not None else None
    if getattr(sock, "type", None) != socket.SOCK_DGRAM or not sys.platform.startswith("linux"):
        return None
    return sock


def set_buffers(lport: Any, receive: int = 0, send: int = 0) -> None:
    """Ask for large socket buffers (forced past rmem_max/wmem_max when root).

    A receiver that is briefly busy (hashing a piece, a GC pause) must not
    lose a burst; a sender's bursts must fit its send buffer.
    """
    sock = lport.getHandle()
    for size, force, plain in (
        (receive, SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (send, SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        if size:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


class InterfaceError(ConfigError):
    """``[node] interface`` (or ``interface6``) names nothing this host has."""


def host_addresses() -> list[tuple[str, str]]:
    """(interface name, IPv4 address) of each interface that has one (Linux)."""
    import fcntl

    found = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                reply = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
            except OSError:
                continue  # no IPv4 address
            found.append((name, socket.inet_ntoa(reply[20:24])))
    return found


def not_on_host(address: str) -> str:
    """One line: ``address`` is not on this host, which has these addresses."""
    have = ", ".join(f"{addr} ({name})" for name, addr in host_addresses()) or "none readable"
    return (
        f"[node] interface = {address} is not an address of this host; "
        f"set it to one this host has: {have}"
    )


def interface_error(error: OSError, address: str) -> Exception:
    """An InterfaceError for errors that mean "no such local address", else ``error``."""
    if error.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.EINVAL):
        return InterfaceError(not_on_host(address))
    return error


def parse_if_inet6(text: str, name: str) -> list[str]:
    """The global-scope IPv6 addresses of interface ``name`` in the text of
    ``/proc/net/if_inet6`` (address, index, prefix length, scope, flags, name
    per line), usable ones (not tentative, deprecated or failed DAD), in order.
    Link-local and host addresses are not: a session's source must be routable."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != name:
            continue
        raw, _index, _plen, scope, flags = fields[:5]
        try:
            if int(scope, 16) != 0 or int(flags, 16) & _UNUSABLE6 or len(raw) != 32:
                continue
            address = ipaddress.IPv6Address(int(raw, 16))
        except ValueError:
            continue
        found.append(str(address))
    return found


def interface_address6(name: str, path: str = IF_INET6) -> str:
    """This host's IPv6 address on interface ``name``: the first usable global
    one (SSM sessions are sent from it and name it as their source; SAP
    announces it as origin; the control channel listens on it).

    InterfaceError (one line naming ``[node] interface6``) when there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise InterfaceError(f"[node] interface6 = {name}: cannot read {path}: {e}") from None
    found = parse_if_inet6(text, name)
    if not found:
        raise InterfaceError(
            f"[node] interface6 = {name}: that interface has no usable global IPv6 address "
            "(link-local ones cannot be a session's source); add one or clear interface6"
        )
    return found[0]


def interface_index(name: str) -> int:
    """The index of a network interface by name (ValueError if there is none)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise ValueError(f"no network interface named {name!r}") from None


def listen(
    reactor: Any,
    protocol: Any,
    port: int,
    family: int,
    interface: str,
    multiple: bool = True,
    bind: str = "",
) -> IListeningPort:
    """A UDP port for multicast of ``family``, sending out of ``interface``.

    ``interface`` is the IPv4 address of the interface for AF_INET, its name
    for AF_INET6. ``bind`` is the local address to bind (default: any of the
    family); an SN's IPv6 data port binds its own address, so that address is
    the source of its SSM sessions. ``multiple`` lets several daemons on one host share the port
    (each gets a copy of every multicast datagram). The socket receives only
    the groups joined on it (IP_MULTICAST_ALL off), and its own multicast is
    looped back so nodes on one host hear each other.
    An interface this host does not have raises InterfaceError (a
    ConfigError: one line naming ``[node] interface``), with no port left open.
    """
    bind = bind or ("" if family == socket.AF_INET else "::")
    lport = reactor.listenMulticast(port, protocol, interface=bind, listenMultiple=multiple)
    sock = lport.getHandle()
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            try:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                )
            except OSError as e:
                raise interface_error(e, interface) from None
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index6(interface))
    except BaseException:
        lport.stopListening()
        raise
    return lport


def index6(interface: str) -> int:
    """``interface_index`` as an InterfaceError naming ``[node] interface6``."""
    try:
        return interface_index(interface)
    except ValueError as e:
        raise InterfaceError(f"[node] interface6: {e}") from None


def ipv6_mreq(group: IPAddress, index: int) -> bytes:
    """struct ipv6_mreq: the group's 16 bytes, then the interface index (not
    an address: what Twisted's joinGroup packs, hence its ENODEV)."""
    return group.packed + struct.pack("@I", index)


def ip_mreq_source(group: IPAddress, interface: str, source: IPAddress) -> bytes:
    """struct ip_mreq_source, Linux order: group, interface, source (BSD differs)."""
    return socket.inet_aton(str(group)) + socket.inet_aton(interface) + source.packed


def _membership(lport: IListeningPort, group: IPAddress, interface: str, add: bool) -> None:
    sock = lport.getHandle()  # type: ignore[attr-defined]
    if group.version == 4:
        mreq = socket.inet_aton(str(group)) + socket.inet_aton(interface)
        option = socket.IP_ADD_MEMBERSHIP if add else socket.IP_DROP_MEMBERSHIP
        try:
            sock.setsockopt(socket.IPPROTO_IP, option, mreq)
        except OSError as e:
            raise (interface_error(e, interface) if add else e) from None
    else:
        option = socket.IPV6_JOIN_GROUP if add else socket.IPV6_LEAVE_GROUP
        sock.setsockopt(socket.IPPROTO_IPV6, option, ipv6_mreq(group, index6(interface)))


def join(lport: IListeningPort, group: IPAddress, interface: str) -> None:
    """Join an any-source ``group`` on ``interface`` (IPv4 address or IPv6 name)."""
    _membership(lport, group, interface, add=True)


def leave(lport: IListeningPort, group: IPAddress, interface: str) -> None:
    """Leave an any-source ``group`` joined with ``join``."""
    _membership(lport, group, interface, add=False)


def join_source(lport: IListeningPort, group: IPAddress, source: IPAddress, interface: str) -> None:
    """Join the source-specific channel (source, group) (RFC 4607)."""
    if group.version != source.version:
        raise ValueError(f"source {source} and group {group} are of different IP versions")
    sock = lport.getHandle()  # type: ignore[attr-defined]
    if group.version == 4:
        mreq = ip_mreq_source(group, interface, source)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
        except OSError as e:
            raise interface_error(e, interface) from None
    else:
        sock.setsockopt(
            socket.IPPROTO_IPV6,
            MCAST_JOIN_SOURCE_GROUP,
            group_source_req(index6(interface), group, source),
        )


def group_source_req(index: int, group: IPAddress, source: IPAddress) -> bytes:
    """struct group_source_req for AF_INET6 (Linux, 64-bit): u32 index, padding
    to sockaddr_storage's 8-byte alignment, two sockaddr_storage of 128 bytes
    holding a sockaddr_in6 each (264 bytes in all)."""

    def storage(addr: IPAddress) -> bytes:
        sin6 = struct.pack("!HHI16sI", socket.AF_INET6, 0, 0, addr.packed, 0)
        # sa_family is host order in the kernel's struct; fix the first field.
        sin6 = struct.pack("@H", socket.AF_INET6) + sin6[2:]
        return sin6.ljust(128, b"\0")

    return struct.pack("@I", index) + b"\0" * 4 + storage(group) + storage(source)


def set_hop_limit(lport: IListeningPort, family: int, hops: int) -> None:
    """Set the multicast TTL (IPv4) or hop limit (IPv6) of the next datagrams."""
    sock = lport.getHandle()  # type: ignore[attr-defined]
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)


def listen_group(
    reactor: Any,
    protocol: Any,
    group: IPAddress,
    port: int,
    interface: str,
    source: IPAddress | None = None,
) -> IListeningPort:
    """A UDP port receiving only ``group``:``port`` (bound to the group, so
    other groups on the port stay out), joined as the channel (source, group)
    when ``source`` is given (SSM), else any-source. ``interface``: the IPv4
    address for an IPv4 group, the interface name for an IPv6 one."""
    family = family_of(group)
    lport = reactor.listenMulticast(port, protocol, interface=str(group), listenMultiple=True)
    try:
        sock = lport.getHandle()
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        if source is not None:
            join_source(lport, group, source, interface)
        else:
            join(lport, group, interface)
    except BaseException:
        lport.stopListening()
        raise
    return lport


def family_of(address: IPAddress | str) -> int:
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6
