"""config.json -> plan (pflask.load.oci), as `pflask plan --oci BUNDLE` shows it.

What a user (an engine's operator) would notice: the plan lists the bundle's
mounts, capability sets, ids, limits, masked paths and seccomp filter; a
field pflask does not support is a one-line error naming it, exit 2, never
silently dropped; fields that ask for nothing are accepted; a hostile
config.json (huge, deep) is refused within a second.  The bundles are made
as the engines make them: `runc spec`'s template, then changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import describe, run_pflask

RUNC = shutil.which("runc")


def runc_template() -> dict[str, Any]:
    """runc's own spec template (`runc spec`), or an equivalent one without runc."""
    if RUNC is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([RUNC, "spec"], cwd=tmp, check=True)
        return json.loads((Path(tmp) / "config.json").read_text())


def bundle(tmp: Path, config: dict[str, Any]) -> Path:
    (tmp / "rootfs").mkdir(exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


def plan_json(path: Path) -> dict[str, Any]:
    result = run_pflask("plan", "--json", "--oci", path)
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


def steps(plan: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in plan["steps"] if s["step"] == kind]


def error(path: Path) -> str:
    """The one-line error of a refused config.json (exit 2)."""
    result = run_pflask("plan", "--oci", path)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_runc_template_plans_every_field(tmp_path: Path) -> None:
    plan = plan_json(bundle(tmp_path, runc_template()))
    [unshare] = steps(plan, "unshare")
    assert set(unshare["namespaces"]) == {"mount", "pid", "ipc", "uts", "net"}
    assert unshare["pid1"] is True
    mounts = [(s["fstype"], s["target"]) for s in steps(plan, "mount")]
    assert mounts == [
        ("proc", "/proc"),
        ("tmpfs", "/dev"),
        ("devpts", "/dev/pts"),
        ("tmpfs", "/dev/shm"),
        ("mqueue", "/dev/mqueue"),
        ("sysfs", "/sys"),
        ("cgroup2", "/sys/fs/cgroup"),
    ]
    shm = steps(plan, "mount")[3]
    assert shm["source"] == "shm" and shm["data"] == "mode=1777,size=65536k"
    assert set(shm["flags"]) == {"nosuid", "noexec", "nodev"}
    [caps] = steps(plan, "capability_sets")
    assert caps["bounding"] == caps["effective"] == ["kill", "net_bind_service", "audit_write"]
    assert caps["inheritable"] == []
    [ids] = steps(plan, "set_ids")
    assert (ids["uid"], ids["gid"], ids["groups"]) == (0, 0, [])
    assert steps(plan, "rlimits")[0]["limits"] == [["nofile", 1024, 1024]]
    assert steps(plan, "no_new_privs") and steps(plan, "remount_root")
    assert steps(plan, "hostname")[0]["name"] == "runc"
    assert "/proc/kcore" in steps(plan, "mask_paths")[0]["paths"]
    [env] = steps(plan, "environment")
    assert env["clear"] is True and dict(env["set"]) == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM": "xterm",
    }
    [cgroup] = steps(plan, "cgroup")
    assert cgroup["group"] == f"pflask_oci-{tmp_path.name}" and "c 1:3 rwm" in cgroup["devices"]
    # The OCI runtime keeps its own records: no claim in pflask's state, no machined.
    assert not steps(plan, "claim_name") and not steps(plan, "register_machine")
    assert not steps(plan, "reaper")  # the process is PID 1, as with runc
    assert plan["steps"][-1] == {"step": "exec", "where": "container", "argv": ["sh"]}


def test_text_plan_names_the_bundle(tmp_path: Path) -> None:
    result = run_pflask("plan", "--oci", bundle(tmp_path, runc_template()))
    assert result.returncode == 0, describe(result)
    assert "capability sets: bounding kill net_bind_service audit_write" in result.stdout
    assert f"pivot_root into {tmp_path}/rootfs" in result.stdout


def test_user_ids_groups_umask_and_mappings(tmp_path: Path) -> None:
    config = runc_template()
    config["process"]["user"] = {"uid": 1000, "gid": 100, "additionalGids": [5, 27], "umask": 18}
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    plan = plan_json(bundle(tmp_path, config))
    [ids] = steps(plan, "set_ids")
    assert (ids["uid"], ids["gid"], ids["groups"], ids["umask"]) == (1000, 100, [5, 27], 18)
    assert steps(plan, "uid_map")[0]["ranges"] == [[0, 200000, 65536]]
    assert steps(plan, "gid_map")[0]["ranges"] == [[0, 200000, 65536]]
    assert "user" in steps(plan, "unshare")[0]["namespaces"]


def test_resources_become_the_cgroup_limits(tmp_path: Path) -> None:
    config = runc_template()
    config["linux"]["resources"].update(
        memory={"limit": 64 << 20},
        pids={"limit": 99},
        cpu={"quota": 50000, "period": 100000, "shares": 1024},
    )
    [cgroup] = steps(plan_json(bundle(tmp_path, config)), "cgroup")
    assert (cgroup["memory"], cgroup["pids"], cgroup["cpu"]) == (64 << 20, 99, 0.5)


def test_cgroups_path_shares_swap_oom_score_and_devices_in_the_plan(tmp_path: Path) -> None:
    config = runc_template()
    config["linux"]["resources"].update(
        memory={"limit": 64 << 20, "swap": 128 << 20}, cpu={"shares": 512}
    )
    config["linux"]["cgroupsPath"] = "kubepods/../pod1/c1"  # cleaned as runc cleans it
    config["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    config["process"]["oomScoreAdj"] = -500
    plan = plan_json(bundle(tmp_path, config))
    [cgroup] = steps(plan, "cgroup")
    assert (cgroup["path"], cgroup["shares"], cgroup["swap"]) == ("pod1/c1", 512, 128 << 20)
    assert "c 10:229 rwm" in cgroup["devices"]
    [nodes] = steps(plan, "device_nodes")
    assert nodes["nodes"] == [["/dev/fuse", "c", 10, 229, 0o666, 0, 0]] and not nodes["bind"]
    [oom] = steps(plan, "oom_score_adj")
    kinds = [s["step"] for s in plan["steps"]]
    assert oom["value"] == -500 and kinds.index("oom_score_adj") < kinds.index("pivot_root")
    text = run_pflask("plan", "--oci", tmp_path).stdout
    assert "at pod1/c1, memory=64M, memory+swap=128M, cpu.shares=512" in text


def test_seccomp_object_is_compiled(tmp_path: Path) -> None:
    config = runc_template()
    config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": [],
        "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    [seccomp] = steps(plan_json(bundle(tmp_path, config)), "seccomp")
    assert seccomp["profile"] == "config.json" and "1 rules, others allow" in seccomp["summary"]


def test_create_runtime_hooks_are_a_host_step(tmp_path: Path) -> None:
    config = runc_template()
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "cat"], "timeout": 5}
    config["hooks"] = {"createRuntime": [hook], "poststop": [{"path": "/bin/true"}]}
    plan = plan_json(bundle(tmp_path, config))
    [step] = steps(plan, "hooks")
    assert step["where"] == "host" and step["bundle"] == str(tmp_path)
    assert step["hooks"] == [["/bin/sh", ["sh", "-c", "cat"], [], 5]]
    kinds = [s["step"] for s in plan["steps"]]
    assert kinds.index("hooks") < kinds.index("await_host") < kinds.index("pivot_root")


def test_namespaces_named_by_path_are_joined(tmp_path: Path) -> None:
    config = runc_template()
    config["linux"]["namespaces"][1]["path"] = "/run/netns/pod"
    plan = plan_json(bundle(tmp_path, config))
    assert "net" not in steps(plan, "unshare")[0]["namespaces"]
    assert steps(plan, "join_namespaces")[0]["paths"] == [["net", "/run/netns/pod"]]
    assert not steps(plan, "loopback")  # the pod's network is the pod's to set up


def test_sysctl_of_the_containers_namespaces(tmp_path: Path) -> None:
    config = runc_template()
    config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    [sysctl] = steps(plan_json(bundle(tmp_path, config)), "sysctl")
    assert sysctl["settings"] == [["net.ipv4.ip_forward", "1"]]
    config["linux"]["sysctl"] = {"kernel.core_pattern": "|/tmp/x"}
    assert error(bundle(tmp_path, config)).endswith(
        "linux.sysctl.kernel.core_pattern: not a parameter of a namespace the container owns"
    )


def test_fields_asking_for_nothing_are_accepted(tmp_path: Path) -> None:
    config = runc_template()
    config["process"].update(apparmorProfile="", oomScoreAdj=0, selinuxLabel="")
    config["linux"].update(mountLabel="", intelRdt=None, devices=[])
    config["hooks"] = {"prestart": [], "poststop": []}
    config["annotations"] = {"io.example/owner": "ops"}
    plan_json(bundle(tmp_path, config))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt: not supported"),
        (
            lambda c: c.update(hooks={"createContainer": [{"path": "/bin/true", "when": 1}]}),
            "hooks.createContainer[0].when: not supported",
        ),
        (
            lambda c: c.update(hooks={"prestart": [{"path": "true"}]}),
            "hooks.prestart[0].path: must be an absolute path",
        ),
        (
            lambda c: c["linux"]["namespaces"][0].update(path="/proc/1/ns/pid"),
            "linux.namespaces[0].path: not supported (joining a pid namespace",
        ),
        (
            lambda c: c["process"]["capabilities"]["bounding"].append("CAP_FLY"),
            "process.capabilities.bounding[3]: unknown capability 'CAP_FLY'",
        ),
        (
            lambda c: c["mounts"][1]["options"].append("rshared"),
            "mounts[1].options[4]: not supported (rshared)",
        ),
        (lambda c: c.update(ociVersion="2.0.0"), "ociVersion: '2.0.0': pflask reads"),
        (
            lambda c: c["linux"]["resources"].update(cpu={"shares": 1}),
            "linux.resources.cpu.shares: must be an integer from 2 to 262144, not 1",
        ),
        (
            lambda c: c["linux"]["resources"].update(memory={"limit": 100, "swap": 50}),
            "linux.resources.memory.swap: 50 is memory plus swap: at least memory.limit (100)",
        ),
        (
            lambda c: c["process"].update(oomScoreAdj=1001),
            "process.oomScoreAdj: must be an integer from -1000 to 1000",
        ),
        (
            lambda c: c["linux"].update(cgroupsPath="/a/../.."),
            "linux.cgroupsPath: '/a/../..': names no group below its parent",
        ),
        (
            lambda c: c["linux"].update(devices=[{"path": "/etc/x", "type": "c"}]),
            "linux.devices[0].path: '/etc/x': a node in /dev (not /dev/pts)",
        ),
        (
            lambda c: c["linux"].update(devices=[{"path": "/dev/x", "type": "q"}]),
            "linux.devices[0].type: 'q': c, u, b or p",
        ),
        (
            lambda c: c["linux"]["resources"].update(blockIO={"weight": 10}),
            "linux.resources.blockIO: not supported",
        ),
        (lambda c: c["process"].update(args=[]), "process.args: required"),
        (lambda c: c["process"].update(env=["NOEQUALS"]), "process.env[0]: 'NOEQUALS' is not"),
    ],
)
def test_unsupported_or_wrong_fields_are_named(tmp_path: Path, change: Any, expected: str) -> None:
    config = runc_template()
    change(config)
    line = error(bundle(tmp_path, config))
    assert line.startswith(f"pflask: {tmp_path}/config.json: "), line
    assert expected in line, line


def test_hostile_config_is_refused_fast(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(" " * (2 << 20))
    start = time.monotonic()
    assert "larger than" in error(tmp_path) or "MiB" in error(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100000 + "]" * 100000)
    assert "nest" in error(tmp_path) or "deep" in error(tmp_path)
    values = {"ociVersion": "1.0.2", "annotations": {str(i): "x" for i in range(20000)}}
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert "values" in error(tmp_path)
    assert time.monotonic() - start < 3  # three runs of pflask, each well under a second


def test_plan_needs_a_manifest_or_a_bundle(tmp_path: Path) -> None:
    result = run_pflask("plan")
    assert result.returncode == 2 and "--oci BUNDLE" in result.stderr
    result = run_pflask("plan", "x.yaml", "--oci", tmp_path)
    assert result.returncode == 2 and "takes no manifest" in result.stderr
