"""Container network links: veth pairs, moved host links, macvlan/ipvlan.

Two halves, matching where the steps run (see docs/architecture.md):

- `HostLinks`, in the supervisor S (host namespaces), while the container's
  first process C1 waits in its new network namespace: creates the links,
  puts the container ends into that namespace, and undoes all of it in
  `cleanup()`.
- `loopback_up()` and `configure()`, inside the container (already in its
  network namespace), before exec.

Everything talks netlink with pyroute2's messages, except `loopback_up()`,
which runs in every container with a network namespace and so uses one ioctl
instead of importing any of pyroute2.  pyroute2 is imported lazily, inside
the functions that need it: importing this module costs nothing more than
`pflask.kernel.libc`.  Only pyroute2's message classes are imported (about 35 ms
here), not its package `__init__` nor IPRoute, which runs on asyncio
(together 110-200 ms): `_encode` fills the messages and `_Rtnl` sends them
(benchmarks/results/network.md has the figures of each way tried).

Namespace handle.  The first call about a container pid opens
/proc/PID/ns/net and keeps that descriptor until `cleanup()`: every later
request names the namespace by that descriptor (IFLA_NET_NS_FD), never by pid
again, and the namespace outlives the container's processes.  That matters for
moved links: when the last reference to a network namespace goes away the
kernel returns *physical* devices to the initial namespace but *destroys
virtual* ones (dummy, ifb, vxlan, veth, macvlan, ...).  Because S still holds
the namespace when the container has died, `cleanup()` can move a virtual
link back to the host under its original name instead of losing it.

Requests about the container's namespace (name checks, deleting macvlans,
moving links back) go through a netlink socket created in that namespace by a
short-lived thread that setns(2)es into it; S's own threads never change
namespace.

Renaming a moved link.  One RTM_NEWLINK carries both IFLA_NET_NS_FD and
IFLA_IFNAME: the kernel moves the device first (keeping its name unless that
name is taken in the target, in which case it uses IFLA_IFNAME directly) and
then renames it *inside the target namespace*, so moving host `eth1` in as
`eth0` works even though the host has an `eth0`.  The two halves are not
atomic: when the rename fails the device has already moved, under its old
name.  `move()` therefore checks first that the name is free in the
container, and records the move before sending the request so that
`cleanup()` finds the device in either place.  Moving a link drops its
addresses and routes and takes it down (kernel behaviour, both ways): a link
given back is down and without addresses (left to the host's own network
configuration, as any link that appears); its MTU and MAC, which the
manifest may have changed inside, are set back to what they were before.

If pflask itself is killed (SIGKILL: no cleanup runs) the namespace dies with
the container and the kernel does the undoing: veth pairs and macvlans go
away with it, a moved physical link returns to the host under its
*container* name (dev<ifindex> when that name is taken there), and a moved
virtual link (a veth end, an ifb, ...) is destroyed, taking a veth's peer
with it.
"""

from __future__ import annotations

import errno
import os
import sys

from pflask.kernel.libc import CLONE_NEWNET, SyscallError, setns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

__all__ = [
    "IPVLAN_MODES",
    "MACVLAN_MODES",
    "HostLinks",
    "NetworkError",
    "configure",
    "loopback_up",
    "preload",
]

# <linux/sockios.h>, <linux/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFNAMSIZ = 16
_IFREQ_SIZE = 40  # sizeof(struct ifreq) on LP64; at least that on every ABI

# <linux/if_addr.h>
IFA_F_NODAD = 0x02

# <linux/if_link.h>: enum macvlan_mode, enum ipvlan_mode
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
_LINK_MODES = {"macvlan": MACVLAN_MODES, "ipvlan": IPVLAN_MODES}

_AF_INET = 2
_AF_INET6 = 10
_NETLINK_ROUTE = 0

_NEWLINK = "netlink RTM_NEWLINK"
_DELLINK = "netlink RTM_DELLINK"
_NEWADDR = "netlink RTM_NEWADDR"
_NEWROUTE = "netlink RTM_NEWROUTE"
_GETLINK = "netlink RTM_GETLINK"


class NetworkError(SyscallError):
    """A failed network operation: the request, the link, errno, and the
    kernel's own explanation when it sent one (netlink extended ack)."""

    def __init__(self, call: str, err: int, detail: str | None = None, reason: str = "") -> None:
        super().__init__(call, err, detail)
        self.reason = reason

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}: {self.reason}" if self.reason else text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.call, self.errno, self.detail, self.reason))


def _netlink_error(exc: Exception, call: str, detail: str) -> NetworkError:
    """NetworkError from a pyroute2 NetlinkError (code, message)."""
    code = getattr(exc, "code", None) or errno.EIO
    args: tuple[Any, ...] = exc.args
    message = str(args[1]) if len(args) > 1 else ""
    reason = "" if message in ("", os.strerror(code)) else message
    return NetworkError(call, code, detail, reason)


def _netlink_errors() -> tuple[type[Exception], ...]:
    _pyroute2_package()
    from pyroute2.netlink.exceptions import NetlinkError

    return (NetlinkError,)


def _pyroute2_package() -> None:
    """Register the `pyroute2` package without running its `__init__`.

    That `__init__` imports every part of pyroute2 (NDB, IPDB, ethtool,
    nftables, wireguard, nl80211, IPRoute and asyncio, ...), 110-200 ms here,
    for modules pflask never uses: pflask imports pyroute2's message classes
    through the bare package.  The package still
    completes itself when asked for a name only its `__init__` defines
    (`from pyroute2 import IPBatch`): that first request runs the `__init__`
    in this very module object, so other code in the process sees the whole
    package as usual.
    """
    if "pyroute2" in sys.modules:
        return
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("No module named 'pyroute2'", name="pyroute2")
    loader = spec.loader
    package = type(sys)("pyroute2")
    package.__spec__ = spec
    package.__loader__ = loader
    package.__file__ = spec.origin
    package.__path__ = spec.submodule_search_locations
    package.__package__ = "pyroute2"
    names = vars(package)

    def complete(name: str) -> Any:
        """A submodule is left to the import system; anything else runs `__init__`."""
        if name.startswith("__") or PathFinder.find_spec(f"pyroute2.{name}", package.__path__):
            raise AttributeError(name)
        del names["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    names["__getattr__"] = complete
    sys.modules["pyroute2"] = package


# --- addresses ------------------------------------------------------------------------
# The manifest's validation has checked them (the schema's patterns, then
# semantics._network with ipaddress): here they are only taken apart.


def _family(address: str) -> int:
    return _AF_INET6 if ":" in address else _AF_INET


def _cidr(text: str) -> tuple[int, str, int]:
    """(family, address, prefix length) of an address/prefix."""
    address, _, prefix = text.partition("/")
    return _family(address), address, int(prefix)


# --- small netlink helpers -------------------------------------------------------


# <linux/netlink.h>
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLM_F_REPLACE = 0x100
_NLM_F_CAPPED = 0x100  # in an error message's own header
_NLM_F_ACK_TLVS = 0x200
_NLMSG_ERROR = 0x2
_NLMSGERR_ATTR_MSG = 1
_NLMSG_HDRLEN = 16

# <linux/rtnetlink.h>: (message type, flags) of each request pflask makes
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24
_ACKED = _NLM_F_REQUEST | _NLM_F_ACK
_REQUESTS = {
    ("link", "get"): (_RTM_GETLINK, _ACKED),
    ("link", "set"): (_RTM_NEWLINK, _ACKED),
    ("link", "add"): (_RTM_NEWLINK, _ACKED | _NLM_F_CREATE | _NLM_F_EXCL),
    ("link", "del"): (_RTM_DELLINK, _ACKED),
    ("addr", "replace"): (_RTM_NEWADDR, _ACKED | _NLM_F_REPLACE | _NLM_F_CREATE),
    ("route", "add"): (_RTM_NEWROUTE, _ACKED | _NLM_F_CREATE | _NLM_F_EXCL),
}


class _Rtnl:
    """A NETLINK_ROUTE socket that sends pyroute2's own messages, without IPRoute.

    pyroute2's IPRoute runs on asyncio and its import costs ~100 ms here
    even without the package `__init__`; its message classes (ifinfmsg,
    ifaddrmsg, rtmsg) cost ~35 ms (benchmarks/results/network.md).  This
    class is the small part between the two: one request at a time (built
    by `_encode` as IPRoute builds it), sent with NLM_F_ACK, answers decoded
    until the kernel's acknowledgement; an error arrives as pyroute2's
    NetlinkError (errno, the kernel's extended ack message when it sent
    one).  The methods keep IPRoute's names and keywords for the few calls
    pflask makes.
    """

    def __init__(self, fileno: int | None = None) -> None:
        import _socket

        if fileno is None:
            self.sock = _socket.socket(
                _socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, _NETLINK_ROUTE
            )
        else:
            self.sock = _socket.socket(fileno=fileno)
        try:
            # The kernel's explanation of an error, without our request echoed back.
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))  # groups 0: the socket only sees its answers
        except BaseException:
            self.sock.close()
            raise
        self.sequence = 0

    def request(self, mode: str, command: str, **query: Any) -> list[Any]:
        """IPRoute's `mode(command, **query)` (mode: link, addr or route)."""
        from struct import unpack_from

        from pyroute2.netlink.exceptions import NetlinkError

        self.sequence += 1
        message = _encode(mode, command, self.sequence, query)
        self.sock.send(message.data)
        answers: list[Any] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSG_HDRLEN <= len(data):
                length, kind, flags, sequence = unpack_from("=IHHI", data, offset)
                if length < _NLMSG_HDRLEN:
                    break  # malformed; the kernel never sends one
                chunk = data[offset : offset + length]
                offset += (length + 3) & ~3
                if sequence != self.sequence:
                    continue
                if kind != _NLMSG_ERROR:
                    answer = type(message)(chunk)
                    answer.decode()
                    answers.append(answer)
                    continue
                error = -unpack_from("=i", chunk, _NLMSG_HDRLEN)[0]
                if error:
                    raise NetlinkError(error, _ext_ack_message(chunk, flags))
                return answers

    def link(self, command: str, **query: Any) -> list[Any]:
        return self.request("link", command, **query)

    def addr(self, command: str, **query: Any) -> list[Any]:
        return self.request("addr", command, **query)

    def route(self, command: str, **query: Any) -> list[Any]:
        return self.request("route", command, **query)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ext_ack_message(chunk: bytes, flags: int) -> str | None:
    """NLMSGERR_ATTR_MSG of an NLMSG_ERROR message, if the kernel sent one.

    After the header and the error code comes our request: only its header
    (NETLINK_CAP_ACK), or all of it; then the extended ack attributes.
    """
    from struct import unpack_from

    if not flags & _NLM_F_ACK_TLVS:
        return None
    request = _NLMSG_HDRLEN if flags & _NLM_F_CAPPED else unpack_from("=I", chunk, 20)[0]
    offset = _NLMSG_HDRLEN + 4 + request
    while offset + 4 <= len(chunk):
        length, kind = unpack_from("=HH", chunk, offset)
        if length < 4:
            break
        if kind & 0x3FFF == _NLMSGERR_ATTR_MSG:
            return chunk[offset + 4 : offset + length].rstrip(b"\0").decode(errors="replace")
        offset += (length + 3) & ~3
    return None


# Keywords (IPRoute's names) -> attributes, for the requests pflask makes.
_LINK_ATTRS = {
    "ifname": "IFLA_IFNAME",
    "mtu": "IFLA_MTU",
    "address": "IFLA_ADDRESS",
    "link": "IFLA_LINK",
    "net_ns_fd": "IFLA_NET_NS_FD",
}
_ROUTE_ATTRS = {"gateway": "RTA_GATEWAY", "oif": "RTA_OIF", "priority": "RTA_PRIORITY"}
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RTN_UNICAST = 1


def _encode(mode: str, command: str, sequence: int, query: dict[str, Any]) -> Any:
    """The request IPRoute would send for `mode(command, **query)`, encoded
    with pyroute2's message classes, byte for byte (tests/test_network.py
    compares them with IPBatch's).

    Only the keywords pflask uses are known (an unknown one is a KeyError):
    pyroute2's generic request filters, which know them all, would cost
    another ~15 ms of imports.
    """
    message = _message_class(mode)()
    query = dict(query)
    if mode == "link":
        message["index"] = query.pop("index", 0)
        up = query.pop("state", None) == "up"
        message["flags"] = message["change"] = IFF_UP if up else 0
        kind = query.pop("kind", None)
        data: list[list[Any]] = []
        peer = query.pop("peer", None)
        if peer is not None:
            peer_attrs = [[_LINK_ATTRS[k], v] for k, v in peer.items()]
            data.append(["VETH_INFO_PEER", {"attrs": peer_attrs}])
        if kind is not None and f"{kind}_mode" in query:
            data.append([f"IFLA_{kind.upper()}_MODE", query.pop(f"{kind}_mode")])
        message["attrs"] = [[_LINK_ATTRS[k], v] for k, v in query.items()]
        if kind is not None:
            info: list[list[Any]] = [["IFLA_INFO_KIND", kind]]
            if data:
                info.append(["IFLA_INFO_DATA", {"attrs": data}])
            message["attrs"].append(["IFLA_LINKINFO", {"attrs": info}])
    elif mode == "addr":
        family = message["family"] = query["family"]
        message["prefixlen"] = query["prefixlen"]
        message["index"] = query["index"]
        message["attrs"] = [["IFA_ADDRESS", query["address"]]]
        if family == _AF_INET:
            message["attrs"].append(["IFA_LOCAL", query["address"]])
        if query.get("flags"):
            message["attrs"].append(["IFA_FLAGS", query["flags"]])
    else:
        message["family"] = query.pop("family")
        message["dst_len"] = query.pop("dst_len")
        message["table"] = _RT_TABLE_MAIN
        message["proto"] = _RTPROT_STATIC
        message["type"] = _RTN_UNICAST
        message["attrs"] = [[_ROUTE_ATTRS[k], v] for k, v in query.items()]
    message_type, flags = _REQUESTS[mode, command]
    message["header"]["type"] = message_type
    message["header"]["flags"] = flags
    message["header"]["sequence_number"] = sequence
    message.encode()
    return message


def _message_class(mode: str) -> Any:
    """pyroute2's message class of `mode` (link, addr, route)."""
    if mode == "link":
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        return ifinfmsg
    if mode == "addr":
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        return ifaddrmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return rtmsg


def _open_rtnl(fileno: int | None = None) -> _Rtnl:
    _pyroute2_package()
    return _Rtnl(fileno)


def _lookup(ipr: _Rtnl, name: str) -> int | None:
    """The index of link `name`, or None when there is no such link."""
    try:
        found = ipr.link("get", ifname=name)
    except _netlink_errors() as exc:
        if getattr(exc, "code", None) == errno.ENODEV:
            return None
        raise _netlink_error(exc, _GETLINK, name) from None
    return int(found[0]["index"]) if found else None


def _link_name(ipr: _Rtnl, index: int) -> str | None:
    """The name of link `index`, or None when there is no such link."""
    try:
        msgs = ipr.link("get", index=index)
    except _netlink_errors() as exc:
        if getattr(exc, "code", None) == errno.ENODEV:
            return None
        raise _netlink_error(exc, _GETLINK, f"index {index}") from None
    for msg in msgs:
        name: str | None = msg.get("ifname")
        return name
    return None


def _add_addresses(
    ipr: _Rtnl, index: int, addresses: list[tuple[int, str, int]], link: str
) -> None:
    for family, address, prefixlen in addresses:
        extra: dict[str, Any] = {}
        if family == _AF_INET6:
            # No duplicate address detection: usable the moment exec happens.
            extra["flags"] = IFA_F_NODAD
        try:
            ipr.addr(
                "replace",
                index=index,
                family=family,
                address=address,
                prefixlen=prefixlen,
                **extra,
            )
        except _netlink_errors() as exc:
            raise _netlink_error(exc, _NEWADDR, f"{address}/{prefixlen} on {link}") from None


def _set_link(ipr: _Rtnl, index: int, link: str, **attrs: Any) -> None:
    try:
        ipr.link("set", index=index, **attrs)
    except _netlink_errors() as exc:
        what = ", ".join(f"{k} {v}" for k, v in attrs.items())
        raise _netlink_error(exc, _NEWLINK, f"{link} ({what})") from None


def _socket_in_netns(nsfd: int, what: str) -> int:
    """A NETLINK_ROUTE socket bound to the namespace `nsfd`.

    A socket belongs to the namespace of the thread that created it, so a
    throwaway thread enters the namespace and makes it; the caller's threads
    never change namespace.
    """
    import _socket
    import threading

    result: list[int | BaseException] = []

    def run() -> None:
        try:
            setns(nsfd, CLONE_NEWNET, what)
            sock = _socket.socket(
                _socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, _NETLINK_ROUTE
            )
            result.append(sock.detach())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name="pflask-netns")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# --- the host side ------------------------------------------------------------------


class _Netns:
    """A container's network namespace, held open by descriptor."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.ipr: _Rtnl | None = None

    def iproute(self) -> _Rtnl:
        if self.ipr is None:
            what = f"network namespace of container pid {self.pid}"
            self.ipr = _open_rtnl(_socket_in_netns(self.fd, what))
        return self.ipr

    def close_socket(self) -> None:
        if self.ipr is not None:
            ipr, self.ipr = self.ipr, None
            ipr.close()


class _Veth:
    def __init__(self, host: str, name: str) -> None:
        self.host = host
        self.name = name
        self.index: int | None = None


class _Moved:
    def __init__(
        self, device: str, index: int, ns: _Netns, name: str, mtu: int | None, mac: str | None
    ) -> None:
        self.device = device  # original host name
        self.index = index  # host ifindex before the move
        self.ns = ns
        self.name = name  # name in the container
        self.inside: int | None = None  # ifindex in the container
        self.mtu = mtu  # host settings before the move, restored on the way back
        self.mac = mac


class _Made:
    """A macvlan/ipvlan created directly in the container."""

    def __init__(self, kind: str, name: str, ns: _Netns) -> None:
        self.kind = kind
        self.name = name
        self.ns = ns
        self.inside: int | None = None


class HostLinks:
    """The supervisor's side: create container links and take them away again.

    Every object is recorded the moment it exists, so `cleanup()` (which the
    supervisor always calls, also after a failed step) removes exactly what was
    made.  Create methods raise `NetworkError` naming the link, the request
    and errno.  Usable as a context manager that cleans up on exit.
    """

    def __init__(self) -> None:
        self._host: _Rtnl | None = None
        self._netns: dict[int, _Netns] = {}
        self._records: list[_Veth | _Moved | _Made] = []

    # -- plumbing

    def _host_ipr(self) -> _Rtnl:
        if self._host is None:
            self._host = _open_rtnl()
        return self._host

    def _ns(self, pid: int) -> _Netns:
        """The container's namespace, opened on first use and held."""
        ns = self._netns.get(pid)
        if ns is not None:
            return ns
        path = f"/proc/{pid}/ns/net"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkError(
                "open", exc.errno or errno.ESRCH, path, f"container process {pid} is gone"
            ) from None
        try:
            mine = os.stat("/proc/thread-self/ns/net")
            theirs = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise NetworkError("stat", exc.errno or errno.EIO, path) from None
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            os.close(fd)
            raise NetworkError(
                "setns",
                errno.EINVAL,
                path,
                f"process {pid} shares the host's network namespace",
            )
        ns = self._netns[pid] = _Netns(pid, fd)
        return ns

    # -- creating

    def veth(
        self,
        host: str,
        name: str,
        pid: int,
        host_addresses: tuple[str, ...] = (),
        host_up: bool = True,
    ) -> None:
        """A veth pair: `host` here, its peer `name` born in the container."""
        addresses = [_cidr(a) for a in host_addresses]
        ns = self._ns(pid)
        ipr = self._host_ipr()
        detail = f"veth {host} <-> {name} (container pid {pid})"
        try:
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": name, "net_ns_fd": ns.fd})
        except _netlink_errors() as exc:
            error = _netlink_error(exc, _NEWLINK, detail)
            if error.errno == errno.EEXIST and not error.reason:
                error.reason = (
                    f"host link {host} already exists"
                    if _lookup(ipr, host) is not None
                    else f"{name} already exists in the container"
                )
            raise error from None
        record = _Veth(host, name)
        self._records.append(record)
        index = record.index = _lookup(ipr, host)
        if index is None:
            raise NetworkError(_GETLINK, errno.ENODEV, detail, f"{host} vanished after creation")
        _add_addresses(ipr, index, addresses, host)
        if host_up:
            _set_link(ipr, index, host, state="up")

    def move(self, device: str, name: str, pid: int) -> None:
        """Move host link `device` into the container, renamed `name`."""
        ns = self._ns(pid)
        ipr = self._host_ipr()
        detail = f"move {device} -> {name} (container pid {pid})"
        index = _lookup(ipr, device)
        if index is None:
            raise NetworkError(_GETLINK, errno.ENODEV, detail, f"no host link {device}")
        inside = ns.iproute()
        if _lookup(inside, name) is not None:
            raise NetworkError(
                _NEWLINK, errno.EEXIST, detail, f"{name} already exists in the container"
            )
        mtu, mac = _mtu_and_mac(ipr, index)
        # Recorded before the request: a failed rename leaves the link moved.
        record = _Moved(device, index, ns, name, mtu, mac)
        self._records.append(record)
        try:
            ipr.link("set", index=index, net_ns_fd=ns.fd, ifname=name)
        except _netlink_errors() as exc:
            raise _netlink_error(exc, _NEWLINK, detail) from None
        record.inside = _lookup(inside, name)

    def macvlan(self, master: str, name: str, mode: str, pid: int, kind: str = "macvlan") -> None:
        """A macvlan (or ipvlan, `kind="ipvlan"`) on host `master`, made in the container."""
        modes = _LINK_MODES[kind]
        detail = f"{kind} {name} on {master} mode {mode} (container pid {pid})"
        ns = self._ns(pid)
        ipr = self._host_ipr()
        master_index = _lookup(ipr, master)
        if master_index is None:
            raise NetworkError(_GETLINK, errno.ENODEV, detail, f"no host link {master} (master)")
        try:
            ipr.link("add", **_vlan_request(kind, name, master_index, modes[mode], ns.fd))
        except _netlink_errors() as exc:
            error = _netlink_error(exc, _NEWLINK, detail)
            if error.errno == errno.EEXIST and not error.reason:
                error.reason = f"{name} already exists in the container"
            elif error.errno == errno.EOPNOTSUPP:
                said = f" ({error.reason})" if error.reason else ""
                error.reason = f"the kernel has no {kind} support{said}"
            raise error from None
        record = _Made(kind, name, ns)
        self._records.append(record)
        record.inside = _lookup(ns.iproute(), name)

    # -- undoing

    def release(self) -> None:
        """Close the netlink sockets (reopened on demand); the namespace stays held.

        For the supervisor to call once the host steps are done, so S does not
        keep sockets open while the container runs.
        """
        if self._host is not None:
            ipr, self._host = self._host, None
            ipr.close()
        for ns in self._netns.values():
            ns.close_socket()

    def cleanup(self) -> None:
        """Undo everything, newest first; idempotent.

        Veth: the host end is deleted (its peer goes with it; if it is already
        gone, nothing to do).  Macvlan/ipvlan: deleted in the container.
        Moved link: moved back to the host under its original name, from the
        container's namespace, which is still held open even if the
        container's processes are gone.  Things that are already gone are not
        errors; other failures are collected and raised together at the end,
        after every record has been tried and the namespaces released.
        """
        errors: list[NetworkError] = []
        records, self._records = self._records, []
        for record in reversed(records):
            try:
                if isinstance(record, _Veth):
                    self._undo_veth(record)
                elif isinstance(record, _Moved):
                    self._undo_move(record)
                else:
                    self._undo_made(record)
            except NetworkError as exc:
                errors.append(exc)
            except OSError as exc:
                errors.append(NetworkError("cleanup", exc.errno or errno.EIO, str(exc)))
        self.release()
        netns, self._netns = self._netns, {}
        for ns in netns.values():
            os.close(ns.fd)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise NetworkError(
                "network cleanup", errors[0].errno or errno.EIO, "; ".join(str(e) for e in errors)
            )

    def _undo_veth(self, record: _Veth) -> None:
        ipr = self._host_ipr()
        index = record.index
        if index is None or _link_name(ipr, index) != record.host:
            # Renamed or gone: only a link by that name that is a veth.
            index = _lookup(ipr, record.host)
            if index is None or not _is_kind(ipr, index, "veth"):
                return
        _delete(ipr, index, f"veth {record.host}")

    def _undo_made(self, record: _Made) -> None:
        inside = record.ns.iproute()
        index = record.inside if record.inside is not None else _lookup(inside, record.name)
        if index is not None:
            _delete(inside, index, f"{record.kind} {record.name} (container)")

    def _undo_move(self, record: _Moved) -> None:
        ipr = self._host_ipr()
        if _link_name(ipr, record.index) in (record.device, record.name):
            return  # never left, or already back
        inside = record.ns.iproute()
        index = record.inside
        if index is None or _link_name(inside, index) is None:
            # Index unknown (the request failed half-way) or stale: go by name.
            index = _lookup(inside, record.name)
            if index is None:
                index = _lookup(inside, record.device)
        if index is None:
            return  # gone (a virtual link whose namespace died before we held it)
        host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        detail = f"move {record.name} back to the host as {record.device}"
        try:
            inside.link("set", index=index, net_ns_fd=host_fd, ifname=record.device)
        except _netlink_errors() as exc:
            error = _netlink_error(exc, _NEWLINK, detail)
            if error.errno == errno.EEXIST and not error.reason:
                # Moving and renaming are two steps in the kernel (see above).
                if _link_name(inside, index) is None:
                    error.reason = (
                        f"{record.device} is taken on the host; the link is back as {record.name}"
                    )
                else:
                    error.reason = (
                        f"{record.device} and {record.name} are both taken on the host; "
                        "the link stays in the container's namespace"
                    )
            raise error from None
        finally:
            os.close(host_fd)
        self._restore_settings(record)

    def _restore_settings(self, record: _Moved) -> None:
        """Give a returned link back the MTU and MAC it had before the move.

        Only what differs is set: some drivers refuse a MAC change even to
        the same value, and a link the container did not touch needs nothing.
        """
        ipr = self._host_ipr()
        index = _lookup(ipr, record.device)
        if index is None:
            return
        mtu, mac = _mtu_and_mac(ipr, index)
        changes: dict[str, Any] = {}
        if record.mtu is not None and mtu != record.mtu:
            changes["mtu"] = record.mtu
        if record.mac is not None and mac != record.mac:
            changes["address"] = record.mac
        if changes:
            _set_link(ipr, index, f"{record.device} (given back by the container)", **changes)

    def __enter__(self) -> HostLinks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _vlan_request(kind: str, name: str, master: int, mode: int, nsfd: int) -> dict[str, Any]:
    """RTM_NEWLINK arguments: `kind` link `name` on `master`, born in `nsfd`."""
    return {
        "ifname": name,
        "kind": kind,
        "link": master,
        "net_ns_fd": nsfd,
        f"{kind}_mode": mode,  # IFLA_MACVLAN_MODE (u32) / IFLA_IPVLAN_MODE (u16)
    }


def _mtu_and_mac(ipr: _Rtnl, index: int) -> tuple[int | None, str | None]:
    """IFLA_MTU and IFLA_ADDRESS of link `index` (None for what it lacks)."""
    try:
        msgs = ipr.link("get", index=index)
    except _netlink_errors() as exc:
        raise _netlink_error(exc, _GETLINK, f"index {index}") from None
    for msg in msgs:
        mtu: int | None = msg.get("mtu")
        mac: str | None = msg.get("address")
        return mtu, mac
    return None, None


def _is_kind(ipr: _Rtnl, index: int, kind: str) -> bool:
    try:
        msgs = ipr.link("get", index=index)
    except _netlink_errors():
        return False
    for msg in msgs:
        linkinfo = msg.get("linkinfo")
        found: str | None = linkinfo.get("kind") if linkinfo is not None else None
        return found == kind
    return False


def _delete(ipr: _Rtnl, index: int, what: str) -> None:
    try:
        ipr.link("del", index=index)
    except _netlink_errors() as exc:
        if getattr(exc, "code", None) != errno.ENODEV:
            raise _netlink_error(exc, _DELLINK, what) from None


# --- inside the container --------------------------------------------------------------


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace (SIOCSIFFLAGS; no pyroute2)."""
    import _socket
    import fcntl

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    call = "ioctl(SIOCGIFFLAGS)"
    try:
        # struct ifreq: char ifr_name[IFNAMSIZ]; union { short ifr_flags; ... }
        ifreq = bytearray(_IFREQ_SIZE)
        ifreq[:2] = b"lo"
        fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq)
        flags = int.from_bytes(ifreq[IFNAMSIZ : IFNAMSIZ + 2], sys.byteorder)
        if not flags & IFF_UP:
            call = "ioctl(SIOCSIFFLAGS)"
            ifreq[IFNAMSIZ : IFNAMSIZ + 2] = (flags | IFF_UP).to_bytes(2, sys.byteorder)
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq)
    except OSError as exc:
        raise NetworkError(call, exc.errno or errno.EIO, "lo") from None
    finally:
        sock.close()


def preload() -> None:
    """Import everything `configure()` and `HostLinks` need from pyroute2 now.

    That costs ~35 ms (pyroute2's message classes; see `_Rtnl`).  The
    supervisor calls this before forking the container's first process when
    the plan has network steps: the children inherit the modules (importing
    starts no thread), so `configure()` in the container imports nothing and
    needs no file of the host's Python installation (it may run after
    pivot_root).
    """
    _pyroute2_package()
    for mode in ("link", "addr", "route"):
        _message_class(mode)
    _netlink_errors()
    import fcntl  # loopback_up's; pyroute2 no longer happens to import it
    from struct import unpack_from

    del fcntl, unpack_from


def configure(
    name: str,
    addresses: tuple[str, ...] = (),
    gateways: tuple[str, ...] = (),
    mtu: int | None = None,
    mac: str | None = None,
    up: bool = True,
) -> None:
    """Configure link `name` in the current network namespace.

    In order: MTU and MAC (while the link is still down), addresses (IPv6
    ones with IFA_F_NODAD, so they are usable at once), up, then one default
    route per gateway through this link.  Several gateways of one family get
    metrics 0, 1, 2, ... so they do not collide.
    """
    parsed = [_cidr(a) for a in addresses]
    routes = [(_family(g), g) for g in gateways]

    with _open_rtnl() as ipr:
        index = _lookup(ipr, name)
        if index is None:
            raise NetworkError(_GETLINK, errno.ENODEV, name, f"no link {name} in the container")
        # Separate requests, so an error names the attribute that failed.
        if mtu is not None:
            _set_link(ipr, index, name, mtu=mtu)
        if mac is not None:
            _set_link(ipr, index, name, address=mac)
        _add_addresses(ipr, index, parsed, name)
        if up:
            _set_link(ipr, index, name, state="up")
        metrics = {_AF_INET: 0, _AF_INET6: 0}
        for family, gateway in routes:
            metric = metrics[family]
            metrics[family] += 1
            route: dict[str, Any] = {
                "family": family,
                "dst_len": 0,
                "gateway": gateway,
                "oif": index,
            }
            if metric:
                route["priority"] = metric
            try:
                ipr.route("add", **route)
            except _netlink_errors() as exc:
                raise _netlink_error(exc, _NEWROUTE, f"default via {gateway} dev {name}") from None
