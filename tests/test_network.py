"""pflask.network against the real kernel (root; real netlink).

Traffic only flows between network namespaces these tests create: a
`Netns` is a forked child that unshares a new network namespace and then
runs functions on request (so `configure()` really runs inside it), and
plays either the container or the "peer" on the other end of a link.  Every
link the tests make is named pft-*; the host's links and named namespaces
must be the same after each test (fixtures `links_clean` and `host_clean`).

This kernel may lack dummy or ipvlan: a "virtual link" is a dummy when the
kernel has it, else an ifb (both are virtual: destroyed with their
namespace); ipvlan tests skip when the kernel has no ipvlan.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pflask import libc, network
from pflask.network import HostLinks, NetworkError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real netlink"),
    pytest.mark.usefixtures("host_clean"),
]

PORT = 7311


# --------------------------------------------------------------------------- harness


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("I", len(data)) + data)


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _recv(fd: int) -> Any:
    head = _read_exactly(fd, 4)
    if head is None:
        raise EOFError("the namespace child went away")
    body = _read_exactly(fd, struct.unpack("I", head)[0])
    if body is None:
        raise EOFError("the namespace child went away")
    return pickle.loads(body)


class ChildError(Exception):
    """An exception raised by a function run in a Netns child (as text)."""

    def __init__(self, kind: str, text: str, errno: int | None) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text
        self.errno = errno


class Netns:
    """A child process in a new network namespace, running functions on request.

    Functions and arguments travel pickled (functions by reference), results
    come back pickled; an exception comes back as a ChildError.
    """

    # Our ends of every live child's pipes: a later child closes them, or it
    # would keep an earlier child from seeing EOF.
    _parent_fds: set[int] = set()

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.close(to_child_w)
                os.close(from_child_r)
                for fd in Netns._parent_fds:
                    os.close(fd)
                libc.unshare(libc.CLONE_NEWNET)
                _send(from_child_w, "ready")
                while True:
                    try:
                        func, args = _recv(to_child_r)
                    except EOFError:
                        break
                    try:
                        reply: tuple[Any, ...] = ("ok", func(*args))
                    except BaseException as exc:
                        reply = ("err", type(exc).__name__, str(exc), getattr(exc, "errno", None))
                    _send(from_child_w, reply)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid = pid
        self._w: int | None = to_child_w
        self._r: int | None = from_child_r
        Netns._parent_fds.update((to_child_w, from_child_r))
        assert _recv(from_child_r) == "ready"

    def start(self, func: Callable[..., Any], *args: Any) -> None:
        assert self._w is not None
        _send(self._w, (func, args))

    def result(self) -> Any:
        assert self._r is not None
        reply = _recv(self._r)
        if reply[0] == "err":
            raise ChildError(*reply[1:])
        return reply[1]

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        self.start(func, *args)
        return self.result()

    def run(self, *argv: str, check: bool = True) -> str:
        """A command in this namespace (nsenter -n), its stdout."""
        return sh("nsenter", "-t", str(self.pid), "-n", *argv, check=check)

    def ip(self, *args: str) -> str:
        return self.run("ip", *args)

    def close(self) -> None:
        """Let the child exit and reap it; idempotent."""
        for fd in (self._w, self._r):
            if fd is not None:
                Netns._parent_fds.discard(fd)
                os.close(fd)
        self._w = self._r = None
        if self.pid:
            os.waitpid(self.pid, 0)
            self.pid = 0

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
        self.close()


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr}")
    return result.stdout


def host_links() -> list[str]:
    """Names of the host's links, from `ip -o link`."""
    out = sh("ip", "-o", "link")
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines())


def host_index(name: str) -> int | None:
    path = f"/sys/class/net/{name}/ifindex"
    try:
        with open(path) as f:
            return int(f.read())
    except OSError:
        return None


def make_virtual_link(name: str) -> int:
    """A dummy link on the host (an ifb when the kernel has no dummy); its ifindex."""
    if subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True).returncode:
        sh("ip", "link", "add", name, "type", "ifb")
    index = host_index(name)
    assert index is not None
    return index


OUR_LINKS = frozenset(
    {"pft-dummy0", "pft-dummy1", "pft-eth7", "pft-master0", *(f"pft-vh{i}" for i in range(10))}
)
"""The host links these tests make (only these are ever deleted by the fixture)."""


@pytest.fixture(autouse=True)
def links_clean() -> Iterator[None]:
    """The host's `ip -o link` names are the same after the test; leftovers of
    ours are deleted (and reported), so one failure does not cascade."""
    before = host_links()
    yield
    after = host_links()
    for name in set(after) - set(before):
        if name in OUR_LINKS:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    added, removed = set(after) - set(before), set(before) - set(after)
    assert after == before, f"links changed: +{sorted(added)} -{sorted(removed)}"


@pytest.fixture
def netns() -> Iterator[Callable[[], Netns]]:
    """A factory of namespace children, all reaped at the end of the test."""
    made: list[Netns] = []

    def make() -> Netns:
        child = Netns()
        made.append(child)
        return child

    yield make
    for child in made:
        child.close()


@pytest.fixture
def links() -> Iterator[HostLinks]:
    host_links = HostLinks()
    yield host_links
    host_links.cleanup()


@pytest.fixture
def master() -> Iterator[str]:
    make_virtual_link("pft-master0")
    sh("ip", "link", "set", "pft-master0", "up")
    yield "pft-master0"
    subprocess.run(["ip", "link", "del", "pft-master0"], capture_output=True)


# --------------------------------------------------------------------------- child functions


_server: list[socket.socket] = []


def listen(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(1)
    _server.append(sock)


def echo_once() -> bytes:
    """Accept one connection on the last listen()ed socket; echo one message."""
    sock = _server.pop()
    sock.settimeout(10)
    conn, _ = sock.accept()
    with conn, sock:
        data = conn.recv(100)
        conn.sendall(data.upper())
    return data


def roundtrip(address: str, port: int, payload: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((address, port))
        sock.sendall(payload)
        return sock.recv(100)


def timed_loopback_up() -> float:
    start = time.perf_counter()
    network.loopback_up()
    return time.perf_counter() - start


def timed_configure(*args: Any) -> float:
    start = time.perf_counter()
    network.configure(*args)
    return time.perf_counter() - start


def tcp(server: Netns, client: Netns, address: str) -> None:
    server.call(listen, address, PORT)
    server.start(echo_once)
    assert client.call(roundtrip, address, PORT, b"hello") == b"HELLO"
    assert server.result() == b"hello"


def ping(ns: Netns, address: str) -> None:
    ns.run("ping", "-c", "1", "-W", "3", address)


# --------------------------------------------------------------------------- import cost, lo


def test_import_does_not_load_pyroute2() -> None:
    code = (
        "import sys, pflask.network\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyroute2', 'typing', 're', 'asyncio', 'socket'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "pyroute2" not in result.stderr
    own = [line for line in result.stderr.splitlines() if line.endswith("| pflask.network")]
    assert own, result.stderr
    self_us = int(own[0].split("|")[0].split(":")[1])
    assert self_us < 20_000, own[0]


def test_preload_covers_configure() -> None:
    """After preload() (in S, before forking), configure() imports nothing."""
    code = (
        "import sys\n"
        "from pflask import libc, network\n"
        "network.preload()\n"
        "libc.unshare(libc.CLONE_NEWNET)\n"
        "before = set(sys.modules)\n"
        "network.loopback_up()\n"
        "network.configure('lo', ('10.239.0.1/32', 'fd42:239::1/128'), (), 65000, None, True)\n"
        "new = sorted(set(sys.modules) - before)\n"
        "assert not new, new\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_loopback_up(netns: Callable[[], Netns]) -> None:
    ns = netns()
    assert "UP" not in ns.ip("-o", "link", "show", "lo").split(">")[0]
    elapsed = ns.call(timed_loopback_up)
    assert "<LOOPBACK,UP" in ns.ip("-o", "link", "show", "lo")
    assert "127.0.0.1/8" in ns.ip("-o", "addr", "show", "lo")
    ping(ns, "127.0.0.1")
    ping(ns, "::1")
    ns.call(network.loopback_up)  # already up: fine
    assert elapsed < 0.005, f"loopback_up took {elapsed * 1e3:.2f} ms"


# --------------------------------------------------------------------------- veth


def test_veth_traffic(netns: Callable[[], Netns], links: HostLinks) -> None:
    container, peer = netns(), netns()
    links.veth("pft-vh0", "eth0", container.pid, ("10.231.0.1/24", "fd42:231::1/64"), True)

    # The host end is here, configured and up; its peer is in the container.
    assert "pft-vh0" in host_links()
    shown = sh("ip", "-o", "addr", "show", "dev", "pft-vh0")
    assert "10.231.0.1/24" in shown and "fd42:231::1/64" in shown
    assert "tentative" not in shown
    assert ",UP" in sh("ip", "-o", "link", "show", "pft-vh0")
    assert "eth0@" in container.ip("-o", "link")

    # Keep traffic off the host: the host end goes into a second test namespace.
    sh("ip", "link", "set", "pft-vh0", "netns", str(peer.pid))
    peer.call(network.loopback_up)
    peer.call(
        network.configure, "pft-vh0", ("10.231.0.1/24", "fd42:231::1/64"), (), None, None, True
    )
    container.call(network.loopback_up)
    container.call(
        network.configure,
        "eth0",
        ("10.231.0.2/24", "fd42:231::2/64"),
        ("10.231.0.1", "fd42:231::1"),
        1400,
        "02:00:00:23:10:02",
        True,
    )

    link = container.ip("-o", "link", "show", "eth0")
    assert "mtu 1400" in link and "02:00:00:23:10:02" in link and ",UP" in link
    addrs = container.ip("-o", "addr", "show", "dev", "eth0")
    assert "10.231.0.2/24" in addrs and "fd42:231::2/64" in addrs
    assert "fd42:231::2/64 scope global tentative" not in addrs
    assert "default via 10.231.0.1 dev eth0" in container.ip("route")
    assert "default via fd42:231::1 dev eth0" in container.ip("-6", "route")

    # Usable at once: no DAD wait before IPv6 works.
    ping(container, "10.231.0.1")
    ping(container, "fd42:231::1")
    ping(peer, "10.231.0.2")
    ping(peer, "fd42:231::2")
    tcp(container, peer, "10.231.0.2")
    tcp(peer, container, "fd42:231::1")
    # An address off the link goes through the default route (to the peer).
    peer.call(network.configure, "lo", ("10.99.0.1/32",), (), None, None, True)
    ping(container, "10.99.0.1")

    # The host end is no longer on the host: cleanup has nothing to delete
    # and must not fail; the pair dies with the namespaces.
    links.cleanup()
    peer.close()
    container.close()


def test_veth_cleanup(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    links.veth("pft-vh1", "eth1", container.pid, (), False)
    assert "state DOWN" in sh("ip", "-o", "link", "show", "pft-vh1")
    links.cleanup()
    assert "pft-vh1" not in host_links()
    assert "eth1" not in container.ip("-o", "link")
    links.cleanup()  # idempotent


def test_veth_outlives_a_dead_container_until_cleanup(
    netns: Callable[[], Netns], links: HostLinks
) -> None:
    container = netns()
    links.veth("pft-vh2", "eth0", container.pid)
    container.kill()
    # The namespace is held by HostLinks, so the pair is still there.
    assert "pft-vh2" in host_links()
    links.cleanup()
    assert "pft-vh2" not in host_links()


def test_veth_create_and_configure_cost(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    links.veth("pft-vh3", "eth0", container.pid, ("10.235.0.1/24",), True)  # warm up
    start = time.perf_counter()
    links.veth("pft-vh4", "eth1", container.pid, ("10.236.0.1/24", "fd42:236::1/64"), True)
    host_side = time.perf_counter() - start
    inside = container.call(
        timed_configure,
        "eth1",
        ("10.236.0.2/24", "fd42:236::2/64"),
        ("10.236.0.1",),
        None,
        None,
        True,
    )
    assert host_side < 0.1 and inside < 0.1, (host_side, inside)


# --------------------------------------------------------------------------- move


@pytest.mark.parametrize("name", ["eth7", "eth0"])  # eth0 also exists on the host
def test_move_and_back(netns: Callable[[], Netns], links: HostLinks, name: str) -> None:
    container = netns()
    index = make_virtual_link("pft-dummy0")
    try:
        links.move("pft-dummy0", name, container.pid)
        assert "pft-dummy0" not in host_links()
        assert f"{name}:" in container.ip("-o", "link", "show", name)
        container.call(network.configure, name, ("10.232.0.2/24",), (), 1300, None, True)
        assert "10.232.0.2/24" in container.ip("-o", "addr", "show", "dev", name)

        links.cleanup()  # the container is alive: moved back, original name
        assert host_index("pft-dummy0") == index
        assert name not in container.ip("-o", "link")
        links.cleanup()
        assert host_index("pft-dummy0") == index
    finally:
        subprocess.run(["ip", "link", "del", "pft-dummy0"], capture_output=True)


def test_cleanup_after_the_container_died(
    netns: Callable[[], Netns], links: HostLinks, master: str
) -> None:
    container = netns()
    index = make_virtual_link("pft-dummy0")
    try:
        links.veth("pft-vh9", "eth0", container.pid)
        links.move("pft-dummy0", "eth7", container.pid)
        links.macvlan(master, "mv0", "bridge", container.pid)
        container.kill()
        # A virtual link would die with the namespace; HostLinks holds it open.
        links.cleanup()
        assert host_index("pft-dummy0") == index
        assert "pft-vh9" not in host_links()
    finally:
        subprocess.run(["ip", "link", "del", "pft-dummy0"], capture_output=True)


def test_kernel_destroys_virtual_links_with_their_namespace(netns: Callable[[], Netns]) -> None:
    """Why HostLinks holds the namespace: without it the link is lost."""
    container = netns()
    make_virtual_link("pft-dummy1")
    sh("ip", "link", "set", "pft-dummy1", "netns", str(container.pid))
    container.kill()
    time.sleep(0.1)
    assert "pft-dummy1" not in host_links()


def test_move_back_when_the_original_name_was_taken(
    netns: Callable[[], Netns], links: HostLinks
) -> None:
    container = netns()
    make_virtual_link("pft-dummy0")
    try:
        links.move("pft-dummy0", "pft-eth7", container.pid)
        make_virtual_link("pft-dummy0")  # someone took the name meanwhile
        with pytest.raises(NetworkError) as info:
            links.cleanup()
        text = str(info.value)
        assert info.value.errno == 17
        assert "back to the host as pft-dummy0" in text and "EEXIST" in text
        assert "pft-dummy0 is taken on the host; the link is back as pft-eth7" in text
        # Not lost: back on the host under its container name.
        assert "pft-eth7" in host_links()
    finally:
        for name in ("pft-dummy0", "pft-eth7"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


# --------------------------------------------------------------------------- macvlan, ipvlan


@pytest.mark.parametrize("mode", sorted(network.MACVLAN_MODES))
def test_macvlan(netns: Callable[[], Netns], links: HostLinks, master: str, mode: str) -> None:
    container = netns()
    links.macvlan(master, "mv0", mode, container.pid)
    assert f"macvlan mode {mode} " in container.ip("-d", "-o", "link", "show", "mv0")
    assert "mv0" not in host_links()
    container.call(network.configure, "mv0", ("10.233.0.2/24",), (), None, None, True)
    assert "10.233.0.2/24" in container.ip("-o", "addr", "show", "dev", "mv0")
    links.cleanup()
    assert "mv0" not in container.ip("-o", "link")
    assert master in host_links()


def test_macvlan_bridge_traffic(netns: Callable[[], Netns], links: HostLinks, master: str) -> None:
    one, two = netns(), netns()
    links.macvlan(master, "mv0", "bridge", one.pid)
    links.macvlan(master, "mv0", "bridge", two.pid)
    one.call(network.configure, "mv0", ("10.234.0.1/24", "fd42:234::1/64"), (), None, None, True)
    two.call(network.configure, "mv0", ("10.234.0.2/24", "fd42:234::2/64"), (), None, None, True)
    ping(one, "10.234.0.2")
    ping(two, "fd42:234::1")
    tcp(one, two, "10.234.0.1")


@pytest.mark.parametrize("mode", sorted(network.IPVLAN_MODES))
def test_ipvlan(netns: Callable[[], Netns], links: HostLinks, master: str, mode: str) -> None:
    container = netns()
    try:
        links.macvlan(master, "iv0", mode, container.pid, kind="ipvlan")
    except NetworkError as exc:
        if exc.errno == 95:  # EOPNOTSUPP
            assert "the kernel has no ipvlan support" in str(exc)
            pytest.skip(f"this kernel has no ipvlan: {exc}")
        raise
    assert f"ipvlan  mode {mode} " in container.ip("-d", "-o", "link", "show", "iv0")
    container.call(network.configure, "iv0", ("10.237.0.2/24",), (), None, None, True)
    links.cleanup()
    assert "iv0" not in container.ip("-o", "link")


@pytest.mark.parametrize("kind", ["macvlan", "ipvlan"])
def test_vlan_request_encoding(kind: str) -> None:
    """What macvlan() sends, checked without kernel support (this kernel may
    lack ipvlan): IFLA_LINK, IFLA_NET_NS_FD and the mode in IFLA_INFO_DATA."""
    from pyroute2 import IPBatch
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    modes = {"macvlan": network.MACVLAN_MODES, "ipvlan": network.IPVLAN_MODES}[kind]
    for mode, code in modes.items():
        batch = IPBatch()
        batch.link("add", **network._vlan_request(kind, "x0", 5, code, 9))
        msg = ifinfmsg(bytes(batch.batch))
        msg.decode()
        batch.close()
        assert msg.get("ifname") == "x0"
        assert msg.get("link") == 5 and msg.get("net_ns_fd") == 9
        info = msg.get("linkinfo")
        assert info.get("kind") == kind
        data = info.get("data")
        raw = data.get(f"IFLA_{kind.upper()}_MODE")
        assert raw in (code, mode), (mode, raw)


# --------------------------------------------------------------------------- failures


def test_veth_name_taken_in_the_container(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    with pytest.raises(NetworkError) as info:
        links.veth("pft-vh5", "lo", container.pid)
    text = str(info.value)
    assert text.startswith("netlink RTM_NEWLINK veth pft-vh5 <-> lo")
    assert "EEXIST" in text and "lo already exists in the container" in text
    links.cleanup()
    assert "pft-vh5" not in host_links()


def test_veth_host_name_taken(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    index = make_virtual_link("pft-dummy0")
    try:
        with pytest.raises(NetworkError, match="host link pft-dummy0 already exists"):
            links.veth("pft-dummy0", "eth0", container.pid)
        links.cleanup()  # must not touch the link it did not make
        assert host_index("pft-dummy0") == index
        assert "eth0" not in container.ip("-o", "link")
    finally:
        subprocess.run(["ip", "link", "del", "pft-dummy0"], capture_output=True)


def test_move_failures(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    with pytest.raises(NetworkError, match="no host link pft-nosuch") as info:
        links.move("pft-nosuch", "eth0", container.pid)
    assert info.value.errno == 19
    index = make_virtual_link("pft-dummy0")
    try:
        with pytest.raises(NetworkError, match="lo already exists in the container"):
            links.move("pft-dummy0", "lo", container.pid)
        links.cleanup()
        assert host_index("pft-dummy0") == index
    finally:
        subprocess.run(["ip", "link", "del", "pft-dummy0"], capture_output=True)


def test_macvlan_failures(netns: Callable[[], Netns], links: HostLinks, master: str) -> None:
    container = netns()
    with pytest.raises(NetworkError, match="no host link pft-nomaster") as info:
        links.macvlan("pft-nomaster", "mv0", "bridge", container.pid)
    assert "macvlan mv0 on pft-nomaster" in str(info.value) and info.value.errno == 19
    with pytest.raises(NetworkError, match="modes: private, vepa, bridge"):
        links.macvlan(master, "mv0", "sideways", container.pid)
    with pytest.raises(NetworkError, match="lo already exists in the container"):
        links.macvlan(master, "lo", "bridge", container.pid)
    links.cleanup()


def test_bad_addresses(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    # Caught before anything exists.
    with pytest.raises(NetworkError, match=r"address of pft-vh6 '10\.0\.0\.300/24'") as info:
        links.veth("pft-vh6", "eth0", container.pid, ("10.0.0.300/24",))
    assert info.value.errno == 22
    assert "pft-vh6" not in host_links()
    with pytest.raises(NetworkError, match=r"prefix length must be 0\.\.32"):
        links.veth("pft-vh6", "eth0", container.pid, ("10.0.0.1/33",))
    # Refused by the kernel after the pair exists: cleanup removes the pair.
    with pytest.raises(NetworkError) as info:
        links.veth("pft-vh6", "eth0", container.pid, ("ff02::1/64",))
    text = str(info.value)
    assert text.startswith("netlink RTM_NEWADDR ff02::1/64 on pft-vh6: EADDRNOTAVAIL"), text
    assert "multicast" in text  # the kernel's own words (extended ack)
    assert "pft-vh6" in host_links()
    links.cleanup()
    assert "pft-vh6" not in host_links()
    assert "eth0" not in container.ip("-o", "link")


def test_configure_failures(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
    links.veth("pft-vh7", "eth0", container.pid)
    with pytest.raises(ChildError, match="no link eth9 in the container"):
        container.call(network.configure, "eth9", (), (), None, None, True)
    with pytest.raises(ChildError, match="eth0 mac '02:00'"):
        container.call(network.configure, "eth0", (), (), None, "02:00", True)
    with pytest.raises(ChildError, match="gateway of eth0 'fd00::g'"):
        container.call(network.configure, "eth0", (), ("fd00::g",), None, None, True)
    with pytest.raises(ChildError) as info:
        container.call(
            network.configure, "eth0", ("10.238.0.2/24",), ("10.9.9.9",), None, None, True
        )
    assert info.value.text.startswith("netlink RTM_NEWROUTE default via 10.9.9.9 dev eth0")
    assert info.value.errno == 101  # ENETUNREACH


def test_container_gone(links: HostLinks) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(NetworkError, match=f"container process {pid} is gone"):
        links.veth("pft-vh8", "eth0", pid)
    with pytest.raises(NetworkError, match="shares the host's network namespace"):
        links.veth("pft-vh8", "eth0", os.getpid())
    links.cleanup()
