"""pflask-oci, runc's command line, with real containers (pflask.commands.runtime).

What an engine (and its operator) notices: the same bundle run by runc and by
pflask-oci shows the same ids, capability, seccomp and no_new_privs lines,
environment, mount points and exit status; `create` leaves PID 1 waiting
and returns, `start` runs the process, `state` says created, running,
paused, stopped; `kill`, `exec`, `ps`, `pause`/`resume`, `delete` work as
runc's; state records another user could have written are refused; errors
reach the --log file as JSON lines.  The engine's shim is played by a
forked child subreaper (in_child), the parent that reaps PID 1 once
`create` has gone, as conmon and containerd-shim are.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import UserInfo, describe, in_child, ok, read_mounts, run_as

pytestmark = pytest.mark.usefixtures("host_clean")

PFLASK_OCI = str(Path(sys.executable).with_name("pflask-oci"))
RUNC = shutil.which("runc")
PR_SET_CHILD_SUBREAPER = 36


def template() -> dict[str, Any]:
    """runc's spec template, without a terminal and with HOME set (runc adds
    HOME when the environment lacks it; pflask-oci passes the environment as
    it is)."""
    if RUNC is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([RUNC, "spec"], cwd=tmp, check=True)
        config: dict[str, Any] = json.loads((Path(tmp) / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["env"].append("HOME=/root")
    config["root"]["path"] = "root"
    return config


class Bundle:
    """A bundle around a private busybox root, and pflask-oci with its own --root."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.dir = directory
        self.state = directory / "state"
        self.log = directory / "log.json"
        self.config = config
        self.write()

    def write(self) -> None:
        (self.dir / "config.json").write_text(json.dumps(self.config))

    def command(self, script: str) -> None:
        self.config["process"]["args"] = ["sh", "-c", script]
        self.write()

    def oci(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [PFLASK_OCI, "--root", str(self.state), "--log", str(self.log)]
        argv += ["--log-format", "json", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def status(self, container_id: str) -> str:
        result = self.oci("state", container_id)
        assert result.returncode == 0, describe(result)
        state = json.loads(result.stdout)
        assert state["id"] == container_id and state["bundle"] == str(self.dir)
        return str(state["status"])


@pytest.fixture
def bundle(writable_busybox_root: Path) -> Bundle:
    return Bundle(writable_busybox_root.parent, template())


def subreaper() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def create(b: Bundle, container_id: str, out: Path) -> int:
    """`create`, its stdio a file as an engine's would be (PID 1 keeps it);
    the pid from --pid-file."""
    pid_file = b.dir / f"{container_id}.pid"
    with open(out, "w") as f:
        argv = [PFLASK_OCI, "--root", str(b.state), "create", "--bundle", str(b.dir)]
        argv += ["--pid-file", str(pid_file), container_id]
        result = subprocess.run(argv, stdout=f, stderr=f, timeout=30)
    assert result.returncode == 0, out.read_text()
    return int(pid_file.read_text())


# -- runc as the reference -------------------------------------------------------------

PROBE = (
    "id; hostname; grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; env | sort; "
    "cut -d' ' -f5 /proc/self/mountinfo | sort; echo done; exit 3"
)


def _mount_points(text: str) -> set[str]:
    """Mount points a process sees, but for what runc and pflask make differently:
    runc mknods the standard /dev nodes where pflask binds the host's (a
    mount each), and on a v1/hybrid host runc mounts the v1 hierarchies under
    a tmpfs where pflask mounts the cgroup2 tree."""
    nodes = {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}
    return {
        line
        for line in text.splitlines()
        if line.startswith("/") and line not in nodes and not line.startswith("/sys/fs/cgroup/")
    }


@pytest.mark.parametrize("seccomp", [False, True])
def test_same_bundle_same_container_as_runc(bundle: Bundle, seccomp: bool) -> None:
    if seccomp:
        bundle.config["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        }
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    bundle.config["process"]["capabilities"]["ambient"] = []
    bundle.command(PROBE)
    assert RUNC is not None
    argv = [RUNC, "--root", str(bundle.dir / "runc"), "run", "--bundle", str(bundle.dir), "r1"]
    theirs = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    ours = bundle.oci("run", "--bundle", str(bundle.dir), "p1")
    assert ours.returncode == theirs.returncode == 3, describe(ours) + describe(theirs)
    assert ours.stderr == theirs.stderr == ""
    mine, runcs = ours.stdout, theirs.stdout
    assert "uid=1000(alice) gid=1000(alice) groups=50(staff)" in mine

    def lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("/")]

    assert lines(mine) == lines(runcs)
    assert ("Seccomp:\t2" in mine) is seccomp
    assert _mount_points(mine) == _mount_points(runcs)
    assert not (bundle.state / "p1").exists()  # run removes its record


# -- create and start ------------------------------------------------------------------


def test_create_waits_and_start_runs(bundle: Bundle) -> None:
    bundle.command("echo started; exit 7")

    def engine(w: int) -> None:
        subreaper()
        out = bundle.dir / "out.txt"
        began = time.monotonic()
        pid = create(bundle, "c1", out)
        created_in = time.monotonic() - began
        seen = {"created": bundle.status("c1"), "created_in": created_in}
        seen["before_start"] = out.read_text()
        seen["ps"] = json.loads(bundle.oci("ps", "--format", "json", "c1").stdout)
        seen["pid"] = pid
        began = time.monotonic()
        started = bundle.oci("start", "c1")
        seen["start"] = [started.returncode, started.stderr, time.monotonic() - began]
        again = bundle.oci("start", "c1")
        seen["start_again"] = [again.returncode, again.stderr]
        _, status = os.waitpid(pid, 0)  # ours to reap, as a shim's
        seen["exit"] = os.waitstatus_to_exitcode(status)
        seen["after"] = out.read_text()
        seen["stopped"] = bundle.status("c1")
        deleted = bundle.oci("delete", "c1")
        seen["delete"] = [deleted.returncode, deleted.stderr]
        gone = bundle.oci("state", "c1")
        seen["gone"] = [gone.returncode, gone.stderr]
        os.write(w, json.dumps(seen).encode())

    seen = json.loads(ok(in_child(engine)))
    assert seen["created"] == "created" and seen["before_start"] == ""
    assert seen["ps"] == [seen["pid"]]
    assert seen["start"][:2] == [0, ""]
    assert seen["start_again"][0] != 0 and "not created" not in seen["start_again"][1]
    assert "cannot start a container that is" in seen["start_again"][1]
    assert seen["exit"] == 7 and seen["after"] == "started\n"
    assert seen["stopped"] == "stopped"
    assert seen["delete"] == [0, ""]
    assert seen["gone"][0] != 0 and "container c1 does not exist" in seen["gone"][1]
    print(f"create {seen['created_in'] * 1000:.0f} ms, start {seen['start'][2] * 1000:.0f} ms")


def test_kill_pause_resume_exec_and_forced_delete(bundle: Bundle) -> None:
    bundle.command("trap 'exit 0' TERM; while true; do sleep 0.1; done")

    def engine(w: int) -> None:
        subreaper()
        pid = create(bundle, "k1", bundle.dir / "out.txt")
        seen: dict[str, Any] = {}
        refused = bundle.oci("delete", "k1")  # created, not stopped: a plain delete is fine
        seen["delete_created"] = refused.returncode
        pid = create(bundle, "k1", bundle.dir / "out.txt")
        assert bundle.oci("start", "k1").returncode == 0
        seen["running"] = bundle.status("k1")
        seen["pause"] = bundle.oci("pause", "k1").returncode
        seen["paused"] = bundle.status("k1")
        seen["resume"] = bundle.oci("resume", "k1").returncode
        seen["resumed"] = bundle.status("k1")
        done = bundle.oci("exec", "k1", "sh", "-c", "grep ^Cap /proc/self/status; exit 4")
        seen["exec"] = [done.returncode, done.stdout, done.stderr]
        seen["pid1_caps"] = bundle.oci("exec", "k1", "sh", "-c", "grep ^Cap /proc/1/status").stdout
        process = dict(bundle.config["process"], args=["sh", "-c", "echo $GREETING"])
        process["env"] = [*process["env"], "GREETING=hello"]
        (bundle.dir / "process.json").write_text(json.dumps(process))
        done = bundle.oci("exec", "--process", str(bundle.dir / "process.json"), "k1")
        seen["exec_process"] = [done.returncode, done.stdout]
        refused = bundle.oci("delete", "k1")
        seen["delete_running"] = [refused.returncode, refused.stderr]
        seen["kill"] = bundle.oci("kill", "k1", "TERM").returncode
        _, status = os.waitpid(pid, 0)
        seen["exit"] = os.waitstatus_to_exitcode(status)
        pid = create(bundle, "k2", bundle.dir / "out2.txt")
        assert bundle.oci("start", "k2").returncode == 0
        forced = bundle.oci("delete", "--force", "k2")
        seen["forced"] = [forced.returncode, forced.stderr]
        _, status = os.waitpid(pid, 0)
        seen["forced_exit"] = os.waitstatus_to_exitcode(status)
        seen["delete_k1"] = bundle.oci("delete", "k1").returncode
        seen["list"] = bundle.oci("list").stdout
        os.write(w, json.dumps(seen).encode())

    seen = json.loads(ok(in_child(engine)))
    assert seen["delete_created"] == 0
    assert (seen["running"], seen["paused"], seen["resumed"]) == ("running", "paused", "running")
    assert seen["pause"] == seen["resume"] == 0
    code, out, err = seen["exec"]
    assert code == 4 and err == "", err
    # The exec'd process gets PID 1's capability sets (the recorded plan's rules).
    assert out == seen["pid1_caps"] and "CapBnd:\t00000000a80425fb" not in out
    assert seen["exec_process"] == [0, "hello\n"]
    assert seen["delete_running"][0] != 0
    assert "cannot delete container k1 that is not stopped: running" in seen["delete_running"][1]
    assert seen["kill"] == 0 and seen["exit"] == 0
    assert seen["forced"] == [0, ""] and seen["forced_exit"] == -signal.SIGKILL
    assert seen["delete_k1"] == 0 and seen["list"] == "ID PID STATUS BUNDLE\n"


def test_hooks_see_the_state_at_each_stage(bundle: Bundle) -> None:
    def hook(stage: str) -> dict[str, Any]:
        out = f"{bundle.dir}/{stage}.json"
        script = f"cat > {out}; echo >> {out}; echo $HOOK_ENV >> {out}"
        return {"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["HOOK_ENV=set"]}

    stages = ("createRuntime", "prestart", "poststart", "poststop")
    bundle.config["hooks"] = {stage: [hook(stage)] for stage in stages}
    bundle.command("exit 0")
    result = bundle.oci("run", "--bundle", str(bundle.dir), "h1")
    assert result.returncode == 0, describe(result)
    for stage in stages:
        text, env = (bundle.dir / f"{stage}.json").read_text().rsplit("\n", 2)[:2]
        state = json.loads(text)
        assert env == "set" and state["id"] == "h1" and state["bundle"] == str(bundle.dir)
        expected = {"createRuntime": "creating", "prestart": "creating"}
        assert state["status"] == expected.get(
            stage, "running" if stage == "poststart" else "stopped"
        )
        assert (state["pid"] > 0) is (stage != "poststop")


def test_container_hooks_run_in_the_container(bundle: Bundle) -> None:
    """createContainer runs in the container's namespaces before its root is
    entered (a host path, the host's files), startContainer after start,
    just before the process, from the container's root; a failing
    startContainer hook keeps the process from running."""
    create_out = f"{bundle.dir}/createContainer.json"
    create_hook = "cat; echo; readlink /proc/self/ns/mnt"
    start_hook = create_hook
    bundle.config["hooks"] = {
        "createContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"({create_hook}) >> {create_out}"]}
        ],
        "startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"({start_hook}) >> /dev/shm/started.json"]}
        ],
    }
    bundle.command("readlink /proc/self/ns/mnt; cat /dev/shm/started.json")

    def engine(w: int) -> None:
        subreaper()
        out = bundle.dir / "out.txt"
        pid = create(bundle, "hc", out)
        seen = {"before_start": Path(f"/proc/{pid}/root/dev/shm/started.json").exists()}
        assert bundle.oci("start", "hc").returncode == 0
        _, status = os.waitpid(pid, 0)
        seen["exit"] = os.waitstatus_to_exitcode(status)
        seen["out"] = out.read_text()
        bundle.oci("delete", "hc")
        os.write(w, json.dumps(seen).encode())

    seen = json.loads(ok(in_child(engine)))
    assert seen["exit"] == 0 and not seen["before_start"], seen
    mnt, state_text, hook_mnt = seen["out"].splitlines()
    created_text, created_mnt = (bundle.dir / "createContainer.json").read_text().splitlines()
    assert mnt == hook_mnt == created_mnt and mnt != os.readlink("/proc/self/ns/mnt")
    started, created = json.loads(state_text), json.loads(created_text)
    assert (started["status"], started["pid"], started["id"]) == ("created", 1, "hc")
    assert (created["status"], created["bundle"]) == ("creating", str(bundle.dir))
    bundle.config["hooks"] = {
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 4"]}]
    }
    bundle.command("echo ran")
    result = bundle.oci("run", "--bundle", str(bundle.dir), "hd")
    assert result.returncode == 125 and "ran" not in result.stdout, describe(result)
    assert "startContainer hook /bin/sh: exit status 4: nope" in result.stderr


def test_a_failing_create_runtime_hook_fails_create(bundle: Bundle) -> None:
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 3"]}
    bundle.config["hooks"] = {"createRuntime": [hook]}
    bundle.write()
    result = bundle.oci("create", "--bundle", str(bundle.dir), "h2")
    assert result.returncode == 125, describe(result)
    assert "createRuntime hook /bin/sh: exit status 3: no network for you" in result.stderr
    assert not (bundle.state / "h2").exists()


def test_a_pods_network_namespace_is_joined(bundle: Bundle) -> None:
    """As a CRI runtime is asked: the sandbox's network namespace, by path;
    `exec` enters it too."""
    name = f"pfoci-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/run/netns/{name}"
        inode = os.stat(path).st_ino
        for entry in bundle.config["linux"]["namespaces"]:
            if entry["type"] == "network":
                entry["path"] = path
        bundle.command("readlink /proc/self/ns/net")
        result = bundle.oci("run", "--bundle", str(bundle.dir), "n1")
        assert result.returncode == 0, describe(result)
        assert result.stdout == f"net:[{inode}]\n"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_missing_command_fails_create(bundle: Bundle) -> None:
    bundle.config["process"]["args"] = ["/no/such/program"]
    bundle.write()
    result = bundle.oci("create", "--bundle", str(bundle.dir), "m1")
    assert result.returncode == 127, describe(result)
    assert "/no/such/program: command not found" in result.stderr
    assert not (bundle.state / "m1").exists()


# -- errors, records, the rest of the command line -------------------------------------


def test_errors_reach_the_log_as_json_lines(bundle: Bundle) -> None:
    bundle.config["linux"]["intelRdt"] = {"closID": "x"}
    bundle.write()
    result = bundle.oci("create", "--bundle", str(bundle.dir), "e1")
    assert result.returncode == 2
    assert result.stderr == f"pflask-oci: {bundle.dir}/config.json: linux.intelRdt: not supported\n"
    [line] = bundle.log.read_text().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["msg"].endswith("linux.intelRdt: not supported")
    assert entry["time"].endswith("Z")


def test_records_others_could_write_are_refused(bundle: Bundle) -> None:
    bundle.command("sleep 10")

    def engine(w: int) -> None:
        subreaper()
        pid = create(bundle, "t1", bundle.dir / "out.txt")
        record = bundle.state / "t1" / "state.json"
        data = json.loads(record.read_text())
        data["pid"] = 1  # a forged record: signal the host's init instead
        record.write_text(json.dumps(data))
        record.chmod(0o666)
        seen = {"writable": bundle.oci("kill", "t1", "KILL").stderr}
        record.chmod(0o600)
        seen["forged_pid"] = bundle.oci("kill", "t1", "KILL").stderr
        bundle.state.chmod(0o777)
        seen["open_root"] = bundle.oci("state", "t1").stderr
        bundle.state.chmod(0o700)
        data["pid"] = pid
        record.write_text(json.dumps(data))
        seen["delete"] = bundle.oci("delete", "--force", "t1").returncode
        os.waitpid(pid, 0)
        os.write(w, json.dumps(seen).encode())

    seen = json.loads(ok(in_child(engine)))
    assert "state.json: owned by uid 0, mode 0666: not trusted" in seen["writable"]
    # pid 1 does not have the recorded start time: not the container's PID 1.
    assert "container t1 is not running" in seen["forged_pid"]
    assert "mode 0777: not trusted" in seen["open_root"]
    assert seen["delete"] == 0


def test_features_version_and_usage(bundle: Bundle) -> None:
    features = json.loads(bundle.oci("features").stdout)
    assert features["ociVersionMax"] == "1.2.0" and "network" in features["linux"]["namespaces"]
    version = bundle.oci("--version")
    assert version.returncode == 0 and version.stdout.startswith("pflask-oci version ")
    assert "spec: 1.2.0" in version.stdout
    result = bundle.oci("start", "nosuch")
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert bundle.oci("state", "../etc").returncode != 0


def test_start_is_quick_to_import() -> None:
    """Engines start the runtime for each command: `state` loads no compiler,
    loader, YAML, jsonschema or seccomp library."""
    code = (
        "import sys; from pflask.commands import runtime\n"
        "try: runtime.main(['--root', '/nonexistent-pflask-oci', 'state', 'x'])\n"
        "except SystemExit: pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('yaml', 'jsonschema', 'pyseccomp')"
        " or m in ('pflask.compile.compiler', 'pflask.load.loader')]\n"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", describe(result)


def test_host_mounts_untouched(bundle: Bundle) -> None:
    before = read_mounts()
    bundle.command("exit 0")
    assert bundle.oci("run", "--bundle", str(bundle.dir), "u1").returncode == 0
    assert read_mounts() == before


def test_an_ordinary_user_runs_a_rootless_bundle(
    bundle: Bundle, test_user: UserInfo, shared_tmp: Path
) -> None:
    """`runc spec --rootless`'s template, run by pflask-test: root inside its
    own user namespace, nobody's cgroup made, its own records."""
    import tempfile

    assert RUNC is not None
    with tempfile.TemporaryDirectory() as tmp:
        os.chown(tmp, test_user.uid, test_user.gid)
        made = run_as([RUNC, "spec", "--rootless", "--bundle", tmp], user=test_user.name)
        assert made.returncode == 0, describe(made)
        config = json.loads((Path(tmp) / "config.json").read_text())
    config["process"]["terminal"] = False
    probe = "id -u; cat /proc/self/uid_map; stat -c %t:%T /dev/fuse; exit 6"
    config["process"]["args"] = ["sh", "-c", probe]
    # a user namespace cannot mknod: the host's node is bound, as runc does
    config["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    config["root"]["path"] = str(bundle.dir / "root")
    bundle.config = config
    bundle.write()
    state = shared_tmp / "user-state"
    state.mkdir(mode=0o700)
    os.chown(state, test_user.uid, test_user.gid)
    argv = [PFLASK_OCI, "--root", str(state), "run", "--bundle", str(bundle.dir), "u1"]
    result = run_as(argv, user=test_user.name)
    assert result.returncode == 6, describe(result)
    inside, outside, count = result.stdout.splitlines()[1].split()
    assert result.stdout.splitlines()[0] == "0"
    assert (inside, outside, count) == ("0", str(test_user.uid), "1")
    assert result.stdout.splitlines()[2] == "a:e5"  # 10:229 in hex
    assert os.listdir(state) == []


# -- cgroups path, resources, OOM score, device nodes: runc's results -----------------

CGROUP_PROBE = (
    "sort /proc/self/cgroup; cat /proc/self/oom_score_adj; "
    "stat -c '%n %F %t:%T %a %u:%g' /dev/pflask-null /dev/pflask-fifo; "
    "echo hi > /dev/pflask-null && echo written; exit 5"
)


def _resources_config(b: Bundle, cgroups_path: str) -> None:
    linux = b.config["linux"]
    linux["cgroupsPath"] = cgroups_path
    linux["resources"]["cpu"] = {"shares": 512}
    linux["resources"]["memory"] = {"limit": 64 << 20, "swap": 96 << 20}
    linux["devices"] = [
        {
            "path": "/dev/pflask-null",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": 0o642,
            "uid": 1000,
            "gid": 50,
        },
        {"path": "/dev/pflask-fifo", "type": "p", "fileMode": 0o600},
    ]
    b.config["process"]["oomScoreAdj"] = 321
    b.command(CGROUP_PROBE)


def _limits(path: str) -> list[str]:
    """What a container's cgroup at `path` says (v1 file names, this host's)."""
    files = ("cpu/cpu.shares", "memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes")
    return [
        Path(f"/sys/fs/cgroup/{f.split('/')[0]}{path}/{f.split('/')[1]}").read_text() for f in files
    ]


def test_cgroups_path_resources_oom_score_and_devices_as_runc(bundle: Bundle) -> None:
    """The same bundle under runc and pflask-oci: the container lands in the
    same cgroups (every hierarchy), with the same cpu.shares, memory and
    memory+swap limits, OOM score adjustment and device nodes, which it may
    use; the group is gone after each."""
    assert RUNC is not None
    _resources_config(bundle, "/pflask-oci-test/c1")
    bundle.command(CGROUP_PROBE + "; sleep 0")

    def engine(w: int) -> None:
        subreaper()
        seen: dict[str, Any] = {}
        for name, argv in (
            ("runc", [RUNC, "--root", str(bundle.dir / "runc")]),
            ("pflask", [PFLASK_OCI, "--root", str(bundle.state)]),
        ):
            pid_file = bundle.dir / f"{name}.pid"
            out = bundle.dir / f"{name}.out"
            with open(out, "w") as f:
                create_argv = [*argv, "create", "--bundle", str(bundle.dir), "--pid-file"]
                subprocess.run([*create_argv, str(pid_file), name], stdout=f, stderr=f, check=True)
            seen[f"{name}_limits"] = _limits("/pflask-oci-test/c1")
            pid = int(pid_file.read_text())
            subprocess.run([*argv, "start", name], check=True, timeout=30)
            _, status = os.waitpid(pid, 0)
            seen[f"{name}_exit"] = os.waitstatus_to_exitcode(status)
            seen[name] = out.read_text()
            subprocess.run([*argv, "delete", name], check=True, timeout=30)
            seen[f"{name}_left"] = sorted(
                str(p) for p in Path("/sys/fs/cgroup").glob("*/pflask-oci-test/c1")
            )
            seen[f"{name}_parents"] = len(list(Path("/sys/fs/cgroup").glob("*/pflask-oci-test")))
            for left in Path("/sys/fs/cgroup").glob("*/pflask-oci-test"):
                for inner in left.glob("*/"):
                    inner.rmdir()
                left.rmdir()  # runc leaves its parents behind; pflask-oci (below) none
        os.write(w, json.dumps(seen).encode())

    seen = json.loads(ok(in_child(engine)))
    assert seen["runc_exit"] == seen["pflask_exit"] == 5
    assert seen["pflask"] == seen["runc"], seen
    assert (
        seen["pflask_limits"] == seen["runc_limits"] == ["512\n", f"{64 << 20}\n", f"{96 << 20}\n"]
    )
    assert ":/pflask-oci-test/c1\n" in seen["pflask"] and "321\n" in seen["pflask"]
    assert "/dev/pflask-null character special file 1:3 642 1000:50" in seen["pflask"]
    assert "/dev/pflask-fifo fifo 0:0 600 0:0" in seen["pflask"]
    assert "written" in seen["pflask"]
    assert seen["runc_left"] == seen["pflask_left"] == []
    assert seen["runc_parents"] > 5 and seen["pflask_parents"] == 0


def test_delete_removes_only_the_cgroups_it_made(bundle: Bundle) -> None:
    """An engine's parent group that exists is joined and kept; the parents
    pflask-oci made are removed with the container's own; with
    --systemd-cgroup, slice:prefix:name lands in nested slices; a relative
    path goes below pflask-oci's own cgroup."""
    bundle.command("cat /proc/self/cgroup")
    kept = Path("/sys/fs/cgroup/cpu/pflask_engine.slice")
    kept.mkdir()
    try:
        bundle.config["linux"]["cgroupsPath"] = "pflask_engine.slice:pft:c1"
        bundle.write()
        argv = ["--systemd-cgroup", "run", "--bundle", str(bundle.dir), "c1"]
        ours = bundle.oci(*argv)
        assert ours.returncode == 0, describe(ours)
        lines = ours.stdout.splitlines()
        assert len(lines) > 5 and all(
            line.endswith(":/pflask_engine.slice/pft-c1.scope") for line in lines
        ), lines
        assert kept.is_dir() and not list(kept.glob("*/"))
        assert list(Path("/sys/fs/cgroup").glob("*/pflask_engine.slice")) == [kept]
        nested = "pflask_a-b.slice:pft:c2"
        bundle.config["linux"]["cgroupsPath"] = nested
        bundle.write()
        ours = bundle.oci("--systemd-cgroup", "run", "--bundle", str(bundle.dir), "c2")
        assert ours.returncode == 0, describe(ours)
        assert "/pflask_a.slice/pflask_a-b.slice/pft-c2.scope\n" in ours.stdout
        bundle.config["linux"]["cgroupsPath"] = "pflask-rel/../../pflask-c3"
        bundle.write()
        ours = bundle.oci("run", "--bundle", str(bundle.dir), "c3")
        own = Path("/proc/self/cgroup").read_text()
        memory = next(line for line in own.splitlines() if ":memory:" in line)
        assert f"{memory.rstrip('/')}/pflask-c3\n".replace("//", "/") in ours.stdout.replace(
            "//", "/"
        )
        bad = bundle.oci("--systemd-cgroup", "run", "--bundle", str(bundle.dir), "c4")
        assert bad.returncode == 2 and "linux.cgroupsPath" in bad.stderr, describe(bad)
    finally:
        kept.rmdir()
