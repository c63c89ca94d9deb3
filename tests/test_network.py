"""pflask.run.network against the real kernel (root; real netlink), then the
whole chain through real `pflask run` containers (last section).

Traffic only flows between network namespaces these tests create: a
`Netns` is a forked child that unshares a new network namespace and then
runs functions on request (so `configure()` really runs inside it), and
plays either the container or the "peer" on the other end of a link.  Every
link the tests make is named pft-*; the host's links and named namespaces
must be the same after each test (fixtures `links_clean` and `host_clean`).

This kernel may lack dummy or ipvlan: a "virtual link" is a dummy when the
kernel has it, else an ifb (both are virtual: destroyed with their
namespace); without ipvlan the ipvlan tests check the kernel's refusal
arrives as a clear error instead.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, load_error, pflask_cmd, run_as, run_pflask, wait_for

from pflask.kernel import libc
from pflask.run import network
from pflask.run.network import HostLinks, NetworkError

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
    {
        "pft-dummy0",
        "pft-dummy1",
        "pft-eth7",
        "pft-master0",
        "pft-ivprobe",
        *(f"pft-vh{i}" for i in range(10)),
        *(f"pft-r{kind}{i}" for kind in "vmfk" for i in range(10)),
    }
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
        "import sys, pflask.run.network\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyroute2', 'typing', 're', 'asyncio', 'socket'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "pyroute2" not in result.stderr
    own = [line for line in result.stderr.splitlines() if line.endswith("| pflask.run.network")]
    assert own, result.stderr
    self_us = int(own[0].split("|")[0].split(":")[1])
    assert self_us < 20_000, own[0]


def test_preload_covers_configure() -> None:
    """After preload() (in S, before forking), configure() imports nothing."""
    code = (
        "import sys\n"
        "from pflask.kernel import libc; from pflask.run import network\n"
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


def test_preload_leaves_out_iproute_asyncio_and_the_package_init() -> None:
    """preload() imports pyroute2's message classes, not its request filters, IPRoute,
    asyncio or the package's __init__ (NDB, ethtool, ...); whoever asks for
    a name of that __init__ later still gets the whole package."""
    code = (
        "import sys\n"
        "from pflask.run import network\n"
        "network.preload()\n"
        "heavy = ('asyncio', 'pyroute2.iproute', 'pyroute2.ndb', 'pyroute2.ethtool')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "package = sys.modules['pyroute2']\n"
        "from pyroute2 import IPBatch, IPRoute\n"
        "import pyroute2\n"
        "assert pyroute2 is package and pyroute2.__version__, vars(pyroute2).keys()\n"
        "assert IPRoute.__module__ == 'pyroute2.iproute.linux', IPRoute\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# What HostLinks and configure() send, as IPRoute would send it.
REQUESTS = {
    "veth": (
        "link",
        "add",
        {"ifname": "pft-a", "kind": "veth", "peer": {"ifname": "eth0", "net_ns_fd": 9}},
    ),
    "up": ("link", "set", {"index": 7, "state": "up"}),
    "mtu": ("link", "set", {"index": 7, "mtu": 1300}),
    "mac": ("link", "set", {"index": 7, "address": "02:00:00:23:20:02"}),
    "move": ("link", "set", {"index": 7, "net_ns_fd": 9, "ifname": "eth0"}),
    "delete": ("link", "del", {"index": 7}),
    "get by name": ("link", "get", {"ifname": "eth0"}),
    "get by index": ("link", "get", {"index": 7}),
    "macvlan": ("link", "add", network._vlan_request("macvlan", "mv0", 5, 4, 9)),
    "ipv4": ("addr", "replace", {"index": 7, "family": 2, "address": "10.1.0.2", "prefixlen": 24}),
    "ipv6": (
        "addr",
        "replace",
        {"index": 7, "family": 10, "address": "fd42::2", "prefixlen": 64, "flags": 2},
    ),
    "route": ("route", "add", {"family": 2, "dst_len": 0, "gateway": "10.1.0.1", "oif": 7}),
    "route6": (
        "route",
        "add",
        {"family": 10, "dst_len": 0, "gateway": "fd42::1", "oif": 7, "priority": 1},
    ),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_requests_encoded_as_iproute_does(case: str) -> None:
    """network._encode builds the very bytes pyroute2's IPRoute would send
    (IPBatch: IPRoute's requests, collected instead of sent), but for the
    sequence number and port id in the header."""
    from pyroute2 import IPBatch

    mode, command, query = REQUESTS[case]
    batch = IPBatch()
    getattr(batch, mode)(command, **query)
    expected = bytes(batch.batch)
    batch.close()
    mine = bytes(network._encode(mode, command, 1, dict(query)).data)
    assert len(mine) == len(expected) > 16
    assert mine[:8] == expected[:8] and mine[16:] == expected[16:], (mine, expected)


def test_kernel_errors_keep_their_message() -> None:
    """An NLMSG_ERROR with extended ack: errno and the kernel's own text."""
    from pyroute2.netlink.exceptions import NetlinkError

    with network._open_rtnl() as ipr, pytest.raises(NetlinkError) as caught:
        ipr.link("add", ifname="pft-x0", kind="pft-no-such-kind")
    assert caught.value.args == (errno.EOPNOTSUPP, "Unknown device type")
    assert "pft-x0" not in host_links()


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


def link_settings(name: str) -> tuple[int, str]:
    """(MTU, MAC) of host link `name`, from sysfs."""
    with open(f"/sys/class/net/{name}/mtu") as f:
        mtu = int(f.read())
    with open(f"/sys/class/net/{name}/address") as f:
        return mtu, f.read().strip()


@pytest.mark.parametrize("name", ["eth7", "eth0"])  # eth0 also exists on the host
def test_move_and_back(netns: Callable[[], Netns], links: HostLinks, name: str) -> None:
    container = netns()
    # A veth end (ifb refuses MAC changes); its peer pft-dummy1 stays here.
    sh("ip", "link", "add", "pft-dummy0", "type", "veth", "peer", "name", "pft-dummy1")
    index = host_index("pft-dummy0")
    try:
        original = link_settings("pft-dummy0")
        links.move("pft-dummy0", name, container.pid)
        assert "pft-dummy0" not in host_links()
        assert f": {name}@" in container.ip("-o", "link", "show", name)
        container.call(
            network.configure, name, ("10.232.0.2/24",), (), 1300, "02:00:00:23:20:02", True
        )
        assert "10.232.0.2/24" in container.ip("-o", "addr", "show", "dev", name)
        assert "mtu 1300" in container.ip("-o", "link", "show", name)

        links.cleanup()  # the container is alive: moved back, original name
        assert host_index("pft-dummy0") == index
        assert name not in container.ip("-o", "link")
        # What the container changed is put back; the kernel took it down
        # and dropped its addresses on the way.
        assert link_settings("pft-dummy0") == original
        assert "state DOWN" in sh("ip", "-o", "link", "show", "pft-dummy0")
        assert "10.232.0.2" not in sh("ip", "-o", "addr", "show", "dev", "pft-dummy0")
        links.cleanup()
        assert host_index("pft-dummy0") == index
    finally:
        for end in ("pft-dummy0", "pft-dummy1"):
            subprocess.run(["ip", "link", "del", end], capture_output=True)


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
        assert info.value.errno == errno.EEXIST
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


def kernel_has_ipvlan(master: str) -> bool:
    """Whether this kernel makes ipvlan links, asked with iproute2, not pflask."""
    probe = subprocess.run(
        ["ip", "link", "add", "pft-ivprobe", "link", master, "type", "ipvlan"],
        capture_output=True,
    )
    if probe.returncode == 0:
        sh("ip", "link", "del", "pft-ivprobe")
    return probe.returncode == 0


@pytest.mark.parametrize("mode", sorted(network.IPVLAN_MODES))
def test_ipvlan(netns: Callable[[], Netns], links: HostLinks, master: str, mode: str) -> None:
    """A working ipvlan where the kernel has the driver; where it has not
    (this test machine's kernel), the kernel's refusal as a clear error,
    with nothing left behind."""
    container = netns()
    if not kernel_has_ipvlan(master):
        with pytest.raises(NetworkError) as info:
            links.macvlan(master, "iv0", mode, container.pid, kind="ipvlan")
        text = str(info.value)
        assert info.value.errno == errno.EOPNOTSUPP
        assert text.startswith(f"netlink RTM_NEWLINK ipvlan iv0 on {master} mode {mode}"), text
        assert "the kernel has no ipvlan support" in text
        links.cleanup()
        assert "iv0" not in container.ip("-o", "link")
        return
    links.macvlan(master, "iv0", mode, container.pid, kind="ipvlan")
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
    assert info.value.errno == errno.ENODEV
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
    assert "macvlan mv0 on pft-nomaster" in str(info.value) and info.value.errno == errno.ENODEV
    with pytest.raises(NetworkError, match="lo already exists in the container"):
        links.macvlan(master, "lo", "bridge", container.pid)
    links.cleanup()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"address": "10.0.0.300/24"}, "address: '10.0.0.300/24' is not an address/prefix"),
        ({"address": "10.0.0.1/33"}, "address: '10.0.0.1/33' is not an address/prefix"),
        ({"host_address": "10.0.0.1/33"}, "host_address: '10.0.0.1/33' is not an address/prefix"),
        ({"gateway": "fd00::g"}, "gateway: 'fd00::g' is not valid"),
        ({"gateway": "10.0.0.256"}, "gateway: '10.0.0.256' is not an IP address"),
        ({"mac": "02:00"}, "mac: '02:00' is not valid"),
        ({"host": "ééééééééé"}, "host: 'ééééééééé' is not a link name"),
        ({"name": ".."}, "name: '..' is not a link name"),
    ],
)
def test_bad_values_are_refused_before_anything_exists(
    tmp_path: Path, entry: dict[str, str], message: str
) -> None:
    """The manifest's validation checks them; the network module takes them as checked."""
    iface = {"type": "veth", "host": "pft-vh6", "name": "eth0", **entry}
    text = yaml.safe_dump({"version": 1, "network": {"interfaces": [iface]}})
    assert f"network.interfaces[0].{message}" in load_error(tmp_path, text)


def test_bad_addresses(netns: Callable[[], Netns], links: HostLinks) -> None:
    container = netns()
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
    with pytest.raises(ChildError) as info:
        container.call(
            network.configure, "eth0", ("10.238.0.2/24",), ("10.9.9.9",), None, None, True
        )
    assert info.value.text.startswith("netlink RTM_NEWROUTE default via 10.9.9.9 dev eth0")
    assert info.value.errno == errno.ENETUNREACH


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


# =========================================================================== pflask run
#
# The whole chain: manifest or classic flags -> compiler -> supervisor -> this
# module, in real containers on the busybox root.  Traffic only ever flows
# between a container and a namespace the test made (`Netns`): a veth's host
# end is moved there while the container waits on stdin, a moved link's or a
# macvlan master's peer lives there from the start, or pflask itself runs
# inside it (so its "host" is the test's namespace).  Host links named here
# are pft-r*; host_clean and links_clean check nothing is left.


def container_name(name: str) -> str:
    """Unique on this machine: other test sessions may run containers now."""
    return f"net{os.getpid()}-{name}"


def manifest(directory: Path, name: str, root: Path, **fields: Any) -> Path:
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": container_name(name), "root": {"path": str(root)}, **fields}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o644)
    return path


def script(text: str) -> list[str]:
    return ["/bin/sh", "-c", text]


class Background:
    """pflask running while the test watches: stdin is a pipe, stdout is read
    line by line (the container announces `ready`), and the process group is
    SIGKILLed if the test ends early."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        self._buffer = b""

    def line(self, timeout: float = 15) -> str:
        """The container's next line of output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise AssertionError(f"no line from the container in {timeout} s")
            chunk = os.read(self._out, 4096)
            if not chunk:
                stderr = self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"container output ended early: {stderr.decode()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def wait_ready(self) -> list[str]:
        """Lines up to `ready`: what the container printed about itself."""
        lines = []
        while (line := self.line()) != "ready":
            lines.append(line)
        return lines

    def container_pid(self) -> int:
        """The container's PID 1 as the host sees it: pflask's one child by now."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
        assert len(children) == 1, children
        return children[0]

    def finish(self, text: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[str]:
        out, err = self.proc.communicate(text, timeout=timeout)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, (self._buffer + out).decode(), err.decode()
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start pflask (with these arguments) in the background; killed at the end."""
    started: list[Background] = []

    def start(*args: str | os.PathLike[str]) -> Background:
        job = Background([*pflask_cmd(), *(os.fspath(a) for a in args)])
        started.append(job)
        return job

    yield start
    for job in started:
        job.kill()


@pytest.fixture
def made_links() -> Iterator[Callable[..., int]]:
    """Make a host link with `ip link add NAME ARGS...` (its ifindex);
    whatever is left of them is deleted at the end."""
    names: list[str] = []

    def make(name: str, *args: str) -> int:
        sh("ip", "link", "add", name, *args)
        names.append(name)
        index = host_index(name)
        assert index is not None
        return index

    yield make
    for name in reversed(names):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def veth_pair(make: Callable[..., int], name: str, peer_name: str, peer: Netns) -> int:
    """A veth pair whose `peer_name` end is in the test namespace `peer`;
    the ifindex of `name`, which stays on the host."""
    index = make(name, "type", "veth", "peer", "name", peer_name)
    sh("ip", "link", "set", peer_name, "netns", str(peer.pid))
    return index


def peer_end(peer: Netns, link: str, *addresses: str) -> None:
    """Configure the test namespace's end of a link, with a TCP echo server
    waiting on PORT (any address) for one connection."""
    peer.call(network.loopback_up)
    peer.call(network.configure, link, addresses, (), None, None, True)
    peer.call(listen, "0.0.0.0", PORT)
    peer.start(echo_once)


def link_names(ip_o_link: str) -> list[str]:
    """Link names from `ip -o link` output (busybox or iproute2)."""
    fields = [line.split(": ") for line in ip_o_link.splitlines()]
    return [f[1].split("@")[0] for f in fields if len(f) > 1 and f[0].isdigit()]


def host_link_state(name: str) -> str:
    return sh("ip", "-o", "link", "show", name)


def check_traffic(output: str, peer: Netns, *pinged: str) -> None:
    for address in pinged:
        assert f"--- {address} ping statistics ---\n1 packets transmitted, 1 packets received" in (
            output
        ), output
    assert "HELLO" in output.splitlines(), output
    assert peer.result() == b"hello\n"


def first_action(v4: str, v6: str | None = None, beyond: str | None = None) -> str:
    """Traffic as the command's very first instructions, no sleep, no retry:
    ping the peer (IPv4, IPv6, an address beyond the gateway), then a TCP
    round trip to its echo server.  Ends with `&& ` for what follows."""
    pings = [f"ping -c1 -W3 {v4}"]
    pings += [f"ping6 -c1 -W3 {v6}"] if v6 else []
    pings += [f"ping -c1 -W3 {beyond}"] if beyond else []
    return " && ".join([*pings, f"echo hello | nc {v4} {PORT}"]) + " && "


INSPECT = (
    "ip -o link show lo; ip -o link show {link}; ip -o addr show {link}; ip route; ip -6 route"
)


# --------------------------------------------------------------------------- veth


def test_run_veth_manifest(
    shared_tmp: Path,
    busybox_root: Path,
    netns: Callable[[], Netns],
    background: Callable[..., Background],
) -> None:
    """Everything a veth entry says, seen from inside and from the host end."""
    path = manifest(
        shared_tmp,
        "veth",
        busybox_root,
        network={
            "interfaces": [
                {
                    "type": "veth",
                    "host": "pft-rv0",
                    "host_address": ["10.241.0.1/24", "fd42:241::1/64"],
                    "name": "eth0",
                    "address": ["10.241.0.2/24", "fd42:241::2/64"],
                    "gateway": ["10.241.0.1", "fd42:241::1"],
                    "mtu": 1400,
                    "mac": "02:00:00:24:10:02",
                }
            ]
        },
    )
    command = (
        INSPECT.format(link="eth0")
        + "; echo ready; read go; "
        + first_action("10.241.0.1", "fd42:241::1", "10.249.0.1")
        + "true"
    )
    job = background("run", path, "--", *script(command))
    inside = "\n".join(job.wait_ready())

    # Inside: lo up, eth0 with its MTU, MAC, addresses and default routes.
    lo, eth0 = inside.splitlines()[:2]
    assert ": lo: <LOOPBACK,UP" in lo
    assert ",UP" in eth0 and "mtu 1400" in eth0 and "link/ether 02:00:00:24:10:02" in eth0
    assert "inet 10.241.0.2/24" in inside and "inet6 fd42:241::2/64" in inside
    assert "default via 10.241.0.1 dev eth0" in inside
    assert "default via fd42:241::1 dev eth0" in inside

    # The host end: on the host, its addresses (usable: no DAD), up.
    shown = sh("ip", "-o", "addr", "show", "dev", "pft-rv0")
    assert "10.241.0.1/24" in shown
    (global6,) = [line for line in shown.splitlines() if "fd42:241::1/64" in line]
    assert "tentative" not in global6
    assert ",UP" in host_link_state("pft-rv0")

    # Off the host: the test's namespace takes the host end (moving drops
    # its addresses) and an address beyond the gateway.
    peer = netns()
    sh("ip", "link", "set", "pft-rv0", "netns", str(peer.pid))
    peer.call(network.configure, "lo", ("10.249.0.1/32",), (), None, None, True)
    peer_end(peer, "pft-rv0", "10.241.0.1/24", "fd42:241::1/64")
    result = job.finish(b"go\n")
    assert result.returncode == 0, describe(result)
    check_traffic(result.stdout, peer, "10.241.0.1", "fd42:241::1", "10.249.0.1")
    # The pair went with the container's namespace: gone from the peer too.
    wait_for(lambda: link_names(peer.ip("-o", "link")) == ["lo"], message="the veth pair to go")


def test_run_veth_usable_at_once(
    shared_tmp: Path, busybox_root: Path, netns: Callable[[], Netns]
) -> None:
    """pflask runs inside a test namespace, so the veth's host end (and the
    traffic) stays there; the command's first instruction uses the network."""
    peer = netns()
    peer.call(network.loopback_up)
    peer.call(listen, "0.0.0.0", PORT)
    peer.start(echo_once)
    path = manifest(
        shared_tmp,
        "veth-first",
        busybox_root,
        network={
            "interfaces": [
                {
                    "type": "veth",
                    "host": "pft-rv1",
                    "host_address": ["10.242.0.1/24", "fd42:242::1/64"],
                    "name": "eth0",
                    "address": ["10.242.0.2/24", "fd42:242::2/64"],
                }
            ]
        },
    )
    command = first_action("10.242.0.1", "fd42:242::1") + "ip -o addr"
    enter = ["nsenter", f"--net=/proc/{peer.pid}/ns/net"]
    result = run_as([*enter, *pflask_cmd(), "run", str(path), "--", *script(command)])
    assert result.returncode == 0, describe(result)
    check_traffic(result.stdout, peer, "10.242.0.1", "fd42:242::1")
    # pflask's "host" was the peer's namespace: the host end was made and
    # removed there.
    assert link_names(peer.ip("-o", "link")) == ["lo"]


def test_run_veth_classic(
    busybox_root: Path, netns: Callable[[], Netns], background: Callable[..., Background]
) -> None:
    """--netif veth:OUTSIDE:INSIDE: a pair, both ends up, nothing configured."""
    command = "ip -o link show eth0; ip -o addr show eth0; echo ready; read go; " + (
        "ip addr add 10.243.0.2/24 dev eth0 && " + first_action("10.243.0.1") + "true"
    )
    # configuring a link inside takes CAP_NET_ADMIN, which the default set leaves out
    job = background(
        "-r",
        busybox_root,
        "--caps",
        "+net_admin",
        "--netif",
        "veth:pft-rv2:eth0",
        "--",
        *script(command),
    )
    inside = job.wait_ready()
    assert ",UP" in inside[0] and "scope global" not in "\n".join(inside[1:])
    assert ",UP" in host_link_state("pft-rv2")
    assert "scope global" not in sh("ip", "-o", "addr", "show", "dev", "pft-rv2")
    peer = netns()
    sh("ip", "link", "set", "pft-rv2", "netns", str(peer.pid))
    peer_end(peer, "pft-rv2", "10.243.0.1/24")
    result = job.finish(b"go\n")
    assert result.returncode == 0, describe(result)
    check_traffic(result.stdout, peer, "10.243.0.1")


def test_run_veth_host_end_down(
    shared_tmp: Path, busybox_root: Path, background: Callable[..., Background]
) -> None:
    path = manifest(
        shared_tmp,
        "veth-down",
        busybox_root,
        network={
            "interfaces": [
                {"type": "veth", "host": "pft-rv3", "host_up": False, "name": "eth0", "up": False}
            ]
        },
    )
    job = background("run", path, "--", *script("ip -o link show eth0; echo ready; read go"))
    inside = job.wait_ready()
    assert ",UP" not in inside[0]
    assert "state DOWN" in host_link_state("pft-rv3")
    assert job.finish(b"go\n").returncode == 0
    assert "pft-rv3" not in host_links()


# --------------------------------------------------------------------------- move


MOVE_MANIFEST = {
    "type": "move",
    "device": "pft-rm0",
    "name": "eth0",  # also the name of the host's own eth0
    "address": ["10.244.0.2/24", "fd42:244::2/64"],
    "gateway": "10.244.0.1",
    "mtu": 1300,
    "mac": "02:00:00:24:40:02",
}


@pytest.mark.parametrize("spec", ["manifest", "classic"])
def test_run_move(
    spec: str,
    shared_tmp: Path,
    busybox_root: Path,
    netns: Callable[[], Netns],
    made_links: Callable[..., int],
) -> None:
    """A host link moved in and renamed, usable at once, returned afterwards
    under its own name and ifindex, its MTU and MAC as before.  The link is a
    veth end whose peer is in a test namespace: being virtual, it would be
    destroyed rather than returned if pflask did not hold the namespace."""
    peer = netns()
    index = veth_pair(made_links, "pft-rm0", "pft-rm1", peer)
    before = link_settings("pft-rm0")
    peer_end(peer, "pft-rm1", "10.244.0.1/24", "fd42:244::1/64")
    if spec == "manifest":
        pinged: tuple[str, ...] = ("10.244.0.1", "fd42:244::1")
        first = first_action(*pinged)
        path = manifest(shared_tmp, "move", busybox_root, network={"interfaces": [MOVE_MANIFEST]})
        result = run_pflask("run", path, "--", *script(first + INSPECT.format(link="eth0")))
    else:
        # Classic flags configure nothing: the command adds an address itself
        # (IPv4 only: an IPv6 one it added would go through DAD first).
        pinged = ("10.244.0.1",)
        setup, first = "ip addr add 10.244.0.2/24 dev eth0 && ", first_action(*pinged)
        result = run_pflask(
            "-r",
            busybox_root,
            "--caps",
            "+net_admin",  # for `ip addr add`: not in the default set
            "--netif",
            "pft-rm0:eth0",
            "--",
            *script(setup + first + "ip -o link show eth0"),
        )
    assert result.returncode == 0, describe(result)
    check_traffic(result.stdout, peer, *pinged)
    if spec == "manifest":
        assert "mtu 1300" in result.stdout and "02:00:00:24:40:02" in result.stdout
        assert "inet 10.244.0.2/24" in result.stdout and "fd42:244::2/64" in result.stdout
        assert "default via 10.244.0.1 dev eth0" in result.stdout
    # Back on the host, as it was; the kernel took it down and dropped the
    # container's addresses.  Its peer never noticed.
    assert host_index("pft-rm0") == index
    assert link_settings("pft-rm0") == before
    assert "state DOWN" in host_link_state("pft-rm0")
    assert "10.244.0.2" not in sh("ip", "-o", "addr", "show", "dev", "pft-rm0")
    assert "pft-rm1" in link_names(peer.ip("-o", "link"))


def test_run_move_keeping_its_name(busybox_root: Path, made_links: Callable[..., int]) -> None:
    """--netif=DEV: the link keeps its name inside (an ifb: virtual too)."""
    index = made_links("pft-rm2", "type", "ifb")
    result = run_pflask("-r", busybox_root, "--netif=pft-rm2", "--", "ip", "-o", "link")
    assert result.returncode == 0, describe(result)
    assert link_names(result.stdout) == ["lo", "pft-rm2"]
    assert host_index("pft-rm2") == index


# --------------------------------------------------------------------------- macvlan, ipvlan


@pytest.mark.parametrize("spec", ["manifest", "classic"])
def test_run_macvlan(
    spec: str,
    shared_tmp: Path,
    busybox_root: Path,
    netns: Callable[[], Netns],
    made_links: Callable[..., int],
) -> None:
    """A macvlan on a host master; the master is a veth whose other end is
    in a test namespace, so the macvlan's frames end up there."""
    peer = netns()
    veth_pair(made_links, "pft-rm3", "pft-rm4", peer)
    sh("ip", "link", "set", "pft-rm3", "up")
    peer_end(peer, "pft-rm4", "10.245.0.1/24", "fd42:245::1/64")
    if spec == "manifest":
        pinged: tuple[str, ...] = ("10.245.0.1", "fd42:245::1")
        first = first_action(*pinged)
        iface = {
            "type": "macvlan",
            "master": "pft-rm3",
            "name": "mv0",
            "mode": "private",
            "address": ["10.245.0.2/24", "fd42:245::2/64"],
            "mtu": 1400,
            "mac": "02:00:00:24:50:02",
        }
        path = manifest(shared_tmp, "macvlan", busybox_root, network={"interfaces": [iface]})
        result = run_pflask("run", path, "--", *script(first + INSPECT.format(link="mv0")))
    else:
        pinged = ("10.245.0.1",)
        setup, first = "ip addr add 10.245.0.2/24 dev mv0 && ", first_action(*pinged)
        result = run_pflask(
            "-r",
            busybox_root,
            "--caps",
            "+net_admin",  # for `ip addr add`: not in the default set
            "--netif",
            "macvlan:pft-rm3:mv0",
            "--",
            *script(setup + first + "ip -o link show mv0"),
        )
    assert result.returncode == 0, describe(result)
    check_traffic(result.stdout, peer, *pinged)
    if spec == "manifest":
        assert "mtu 1400" in result.stdout and "02:00:00:24:50:02" in result.stdout
    mv0 = [line for line in result.stdout.splitlines() if ": mv0@" in line]
    assert len(mv0) == 1 and ",UP" in mv0[0], result.stdout


@pytest.mark.parametrize("mode", sorted(network.MACVLAN_MODES))
def test_run_macvlan_mode(
    mode: str,
    shared_tmp: Path,
    busybox_root: Path,
    made_links: Callable[..., int],
    background: Callable[..., Background],
) -> None:
    made_links("pft-rm5", "type", "ifb")
    iface = {"type": "macvlan", "master": "pft-rm5", "name": "mv0", "mode": mode}
    path = manifest(shared_tmp, "modes", busybox_root, network={"interfaces": [iface]})
    job = background("run", path, "--", *script("echo ready; read go"))
    job.wait_ready()
    details = sh("nsenter", f"--net=/proc/{job.container_pid()}/ns/net", "ip", "-d", "-o", "link")
    assert f"macvlan mode {mode} " in details, details
    assert job.finish(b"go\n").returncode == 0


@pytest.mark.parametrize("spec", ["manifest", "classic"])
def test_run_ipvlan(
    spec: str, shared_tmp: Path, busybox_root: Path, made_links: Callable[..., int]
) -> None:
    """ipvlan where the kernel has it; here (no ipvlan driver) the kernel's
    refusal, as exit 125 naming the step and the link, after which the veth
    made before it is gone too."""
    made_links("pft-rm6", "type", "ifb")
    sh("ip", "link", "set", "pft-rm6", "up")
    if spec == "manifest":
        interfaces = [
            {"type": "veth", "host": "pft-rv4", "name": "eth0"},
            {"type": "ipvlan", "master": "pft-rm6", "name": "iv0", "mode": "l3"},
        ]
        path = manifest(shared_tmp, "ipvlan", busybox_root, network={"interfaces": interfaces})
        args: list[str | os.PathLike[str]] = ["run", path, "--"]
        step, mode = "step 4", "l3"
    else:
        args = ["-r", busybox_root, "--netif", "ipvlan:pft-rm6:iv0", "--"]
        step, mode = "step 3", "l2"
    result = run_pflask(*args, "ip", "-o", "link", "show", "iv0")
    if kernel_has_ipvlan("pft-rm6"):
        assert result.returncode == 0, describe(result)
        assert "iv0" in result.stdout
    else:
        assert result.returncode == 125, describe(result)
        assert result.stderr.startswith(f"pflask: {step} (ipvlan iv0 on pft-rm6 (mode {mode})): ")
        assert "ENOTSUP" in result.stderr or "EOPNOTSUPP" in result.stderr
        assert "the kernel has no ipvlan support (Unknown device type)" in result.stderr
    assert "pft-rv4" not in host_links()


# --------------------------------------------------------------------------- failures


FAILURES = {
    "veth host name taken": (
        [{"type": "veth", "host": "pft-rf0", "name": "eth0"}],
        125,
        ["step 3 (veth pft-rf0 (host) <-> eth0 (container))", "host link pft-rf0 already exists"],
    ),
    "master missing after a veth and a move": (
        [
            {"type": "veth", "host": "pft-rv5", "name": "eth0"},
            {"type": "move", "device": "pft-rf1", "name": "eth1"},
            {"type": "macvlan", "master": "pft-nomaster", "name": "mv0"},
        ],
        125,
        ["step 5 (macvlan mv0 on pft-nomaster (mode bridge))", "no host link pft-nomaster"],
    ),
    "host address the kernel refuses": (
        [{"type": "veth", "host": "pft-rv6", "name": "eth0", "host_address": "ff02::1/64"}],
        125,
        ["step 3 (veth pft-rv6", "RTM_NEWADDR ff02::1/64 on pft-rv6: EADDRNOTAVAIL", "multicast"],
    ),
    "gateway unreachable, inside": (
        [
            {"type": "veth", "host": "pft-rv7", "name": "eth0"},
            {
                "type": "move",
                "device": "pft-rf1",
                "name": "eth1",
                "address": "10.246.0.2/24",
                "gateway": "10.9.9.9",
            },
        ],
        125,
        ["(configure eth1: 10.246.0.2/24, default via 10.9.9.9, up)", "ENETUNREACH"],
    ),
    "move of a missing link": (
        [{"type": "move", "device": "pft-nosuch", "name": "eth0"}],
        125,
        ["step 3 (move host link pft-nosuch into the container as eth0)", "no host link"],
    ),
    "bad address (manifest)": (
        [{"type": "veth", "host": "pft-rv8", "name": "eth0", "address": "10.0.0.300/24"}],
        2,
        ["network.interfaces[0].address: '10.0.0.300/24' is not an address/prefix"],
    ),
    "name used twice (manifest)": (
        [
            {"type": "veth", "host": "pft-rv8", "name": "eth0"},
            {"type": "move", "device": "pft-rf1", "name": "eth0"},
        ],
        2,
        ["interface name 'eth0' is already used by interfaces[0]"],
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_run_failure_leaves_nothing(
    case: str, shared_tmp: Path, busybox_root: Path, made_links: Callable[..., int]
) -> None:
    """A clear error (125 for setup, 2 for the manifest), and no link is
    left: the veths made are gone, the moved link is back, the link that was
    in the way is untouched."""
    interfaces, status, fragments = FAILURES[case]
    taken = made_links("pft-rf0", "type", "ifb")
    moved = made_links("pft-rf1", "type", "ifb")
    path = manifest(shared_tmp, "fails", busybox_root, network={"interfaces": interfaces})
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == status, describe(result)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("pflask: ") and len(result.stderr.splitlines()) == 1
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert (host_index("pft-rf0"), host_index("pft-rf1")) == (taken, moved)
    assert not [name for name in host_links() if name.startswith("pft-rv")]


def test_run_failure_classic(busybox_root: Path, made_links: Callable[..., int]) -> None:
    taken = made_links("pft-rf2", "type", "ifb")
    result = run_pflask("-r", busybox_root, "--netif", "veth:pft-rf2:eth0", "--", "true")
    assert result.returncode == 125, describe(result)
    assert "step 3 (veth pft-rf2 (host) <-> eth0 (container))" in result.stderr
    assert "host link pft-rf2 already exists" in result.stderr
    assert host_index("pft-rf2") == taken


# --------------------------------------------------------------------------- SIGKILL


def test_a_second_container_of_a_name_is_refused_before_its_links(
    shared_tmp: Path, busybox_root: Path, background: Callable[..., Background]
) -> None:
    """The name is claimed before any host link is made: the second of two
    containers called alike hears that, not that its veth's host end exists."""
    interfaces = [{"type": "veth", "host": "pft-rn0", "name": "eth0"}]
    path = manifest(shared_tmp, "twice", busybox_root, network={"interfaces": interfaces})
    first = background("run", path, "--", *script("echo ready; exec sleep 60"))
    first.wait_ready()
    second = run_pflask("run", path, "--", "echo", "ran")
    assert second.returncode == 125, describe(second)
    assert "is already running" in second.stderr and "already exists" not in second.stderr
    assert "ran" not in second.stdout
    assert "pft-rn0" in host_links()  # the first container's, untouched
    assert run_pflask("stop", container_name("twice"), "--timeout", "1").returncode == 0
    assert first.proc.wait(timeout=10) == 143  # the shell's exec'd sleep, stopped by SIGTERM


def test_sigkilled_pflask_leaves_no_link(
    shared_tmp: Path,
    busybox_root: Path,
    made_links: Callable[..., int],
    background: Callable[..., Background],
) -> None:
    """No cleanup runs when pflask is SIGKILLed; the container dies with it
    (PDEATHSIG) and so does its network namespace, and the kernel removes
    the veth pair (host end included) and the macvlan.  A moved *virtual*
    link is destroyed with the namespace (a physical one would come back,
    named as it was inside, or devN): the price of SIGKILL."""
    made_links("pft-rk0", "type", "ifb")
    made_links("pft-rk1", "type", "ifb")
    sh("ip", "link", "set", "pft-rk1", "up")
    interfaces = [
        {"type": "veth", "host": "pft-rk2", "name": "eth0", "host_address": "10.247.0.1/24"},
        {"type": "move", "device": "pft-rk0", "name": "eth1"},
        {"type": "macvlan", "master": "pft-rk1", "name": "mv0"},
    ]
    path = manifest(shared_tmp, "killed", busybox_root, network={"interfaces": interfaces})
    job = background("run", path, "--", *script("echo ready; exec sleep 60"))
    job.wait_ready()
    assert "pft-rk2" in host_links() and "pft-rk0" not in host_links()
    os.kill(job.proc.pid, signal.SIGKILL)
    job.proc.wait(timeout=10)
    wait_for(lambda: "pft-rk2" not in host_links(), message="the veth's host end to go")
    assert "pft-rk0" not in host_links()  # the moved ifb: destroyed by the kernel
    assert "pft-rk1" in host_links()  # the master is the host's own
    # The dead pflask's state record is stale: the next `pflask ps` drops it.
    listing = run_pflask("ps")
    assert listing.returncode == 0, describe(listing)
    assert container_name("killed") not in listing.stdout


def test_stopped_pflask_gives_links_back(
    shared_tmp: Path,
    busybox_root: Path,
    made_links: Callable[..., int],
    background: Callable[..., Background],
) -> None:
    """SIGTERM (docker stop, systemctl stop) reaches the command; once it has
    ended pflask undoes the links as after a normal exit."""
    index = made_links("pft-rk3", "type", "ifb")
    interfaces = [
        {"type": "veth", "host": "pft-rk4", "name": "eth0"},
        {"type": "move", "device": "pft-rk3", "name": "eth1"},
    ]
    path = manifest(shared_tmp, "stopped", busybox_root, network={"interfaces": interfaces})
    job = background("run", path, "--", *script("echo ready; exec sleep 60"))
    job.wait_ready()
    os.kill(job.proc.pid, signal.SIGTERM)
    result = job.finish()
    assert result.returncode == 128 + signal.SIGTERM, describe(result)
    assert host_index("pft-rk3") == index
    assert "pft-rk4" not in host_links()


# --------------------------------------------------------------------------- unprivileged


@pytest.mark.parametrize("spec", ["manifest", "classic"])
def test_unprivileged_isolated_lo(
    spec: str, shared_tmp: Path, busybox_root: Path, test_user: Any
) -> None:
    command = script(
        "ip -o link; ping -c1 -W3 127.0.0.1 && ping6 -c1 -W3 ::1 && readlink /proc/self/ns/net"
    )
    if spec == "manifest":
        path = manifest(shared_tmp, "lo", busybox_root, namespaces={"net": True})
        result = run_pflask("run", path, "--", *command, user="pflask-test")
    else:
        result = run_pflask("-r", busybox_root, "--netif", "--", *command, user="pflask-test")
    assert result.returncode == 0, describe(result)
    assert link_names(result.stdout) == ["lo"]
    assert ": lo: <LOOPBACK,UP" in result.stdout
    assert "1 packets received" in result.stdout
    assert result.stdout.split()[-1] != os.readlink("/proc/self/ns/net")


UNPRIVILEGED_LINKS = {
    "veth": ({"type": "veth", "host": "pft-rv9", "name": "eth0"}, "veth:pft-rv9:eth0"),
    "move": ({"type": "move", "device": "eth0", "name": "eth1"}, "eth0:eth1"),
    "macvlan": ({"type": "macvlan", "master": "eth0", "name": "mv0"}, "macvlan:eth0:mv0"),
    "ipvlan": ({"type": "ipvlan", "master": "eth0", "name": "iv0"}, "ipvlan:eth0:iv0"),
}


@pytest.mark.parametrize("spec", ["manifest", "classic"])
@pytest.mark.parametrize("kind", list(UNPRIVILEGED_LINKS))
def test_unprivileged_links_need_root(
    kind: str, spec: str, shared_tmp: Path, busybox_root: Path, test_user: Any
) -> None:
    iface, flag = UNPRIVILEGED_LINKS[kind]
    if spec == "manifest":
        path = manifest(shared_tmp, "links", busybox_root, network={"interfaces": [iface]})
        result = run_pflask("run", path, "--", "true", user="pflask-test")
    else:
        result = run_pflask("-r", busybox_root, "--netif", flag, "--", "true", user="pflask-test")
    assert result.returncode == 2, describe(result)
    assert "network.interfaces: creating or moving network links needs root" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- start-up


def test_pyroute2_only_with_interfaces(shared_tmp: Path, busybox_root: Path) -> None:
    """`python -X importtime` reports every import in pflask and in the
    container's processes before exec: lo alone needs no pyroute2."""
    lo = manifest(shared_tmp, "lo-only", busybox_root, namespaces={"net": True})
    veth = manifest(
        shared_tmp,
        "one-veth",
        busybox_root,
        network={"interfaces": [{"type": "veth", "host": "pft-rv9", "name": "eth0"}]},
    )
    for path, wanted in ((lo, False), (veth, True)):
        result = run_as(
            [sys.executable, "-X", "importtime", "-m", "pflask", "run", str(path), "--", "true"]
        )
        assert result.returncode == 0, describe(result)
        assert ("| pyroute2" in result.stderr) is wanted, path.name
