"""The compiler's decisions: order, placement, user namespaces, defaults.  No syscalls."""

from __future__ import annotations

from typing import Any

import pytest

from pflask.compile import compiler
from pflask.compile import plan as p
from pflask.compile.context import Context
from pflask.errors import ManifestError
from pflask.load import manifest

ROOT = Context(uid=0, gid=0)
USER = Context(uid=1000, gid=1000, subuid=((100000, 65536),), subgid=((200000, 65536),))


def compile_data(data: dict[str, Any], ctx: Context = ROOT) -> p.Plan:
    return compiler.compile_plan(manifest.from_data({"name": "t", **data}), ctx)


def kinds(the_plan: p.Plan) -> list[str]:
    return [s.kind for s in the_plan.steps]


def step(the_plan: p.Plan, cls: type[p.Step]) -> Any:
    return next(s for s in the_plan.steps if isinstance(s, cls))


def test_order_of_a_full_container() -> None:
    the_plan = compile_data(
        {
            "root": {"path": "/r"},
            "hostname": "h",
            "user": "alice",
            "mounts": [{"type": "tmp", "target": "/tmp"}],
            "network": {"interfaces": [{"type": "veth", "host": "v0", "name": "eth0"}]},
            "cgroup": {"pids": 10},
            "capabilities": ["-all", "+chown"],
            "security": {"no_new_privileges": True, "rlimits": {"nofile": 10}},
            "workdir": "/w",
        }
    )
    order = kinds(the_plan)
    expected = [
        "unshare",
        "claim_name",
        "cgroup",
        "veth",
        "await_host",
        "unshare",
        "register_machine",
        "propagation",
        "bind_root",
        "mount",
        "loopback",
        "configure_link",
        "rlimits",
        "switch_user",
        "capabilities",
        "no_new_privs",
        "environment",
        "chdir",
        "seccomp",
        "reaper",
        "exec",
    ]
    positions = [order.index(k) if k not in ("unshare", "mount") else None for k in expected]
    numbered = [x for x in positions if x is not None]
    assert numbered == sorted(numbered)
    assert order.index("pivot_root") < order.index("hostname") < order.index("loopback")
    assert order.index("mask_paths") < order.index("pivot_root")
    # host steps all come before the container's second unshare (the cgroup namespace),
    # which waits for them; the name is claimed before anything is made on the host
    assert [s.where for s in the_plan.steps[1:4]] == ["host", "host", "host"]
    assert the_plan.steps[1] == p.ClaimName(name=the_plan.name)
    assert the_plan.steps[4] == p.AwaitHost(after="host steps")
    assert the_plan.steps[5] == p.Unshare(namespaces=("cgroup",))
    # that one go is the last: the name is claimed, so the command need not wait again
    assert order.count("await_host") == 1
    assert order.count("claim_name") == 1
    # machined's registration runs after the last go, while the command starts
    assert [s.where for s in the_plan.steps[5:]].count("host") == 1
    assert order.index("seccomp") == order.index("reaper") - 1  # no_new_privs: loaded last
    assert step(the_plan, p.SwitchUser).keep_caps is True


def test_without_host_steps_the_container_waits_only_before_the_command() -> None:
    """It builds its mounts while the supervisor claims the name; the command
    starts only once the supervisor says so."""
    the_plan = compile_data({"root": {"path": "/srv/root"}})
    order = kinds(the_plan)
    assert order.count("await_host") == 1
    # the name is claimed on the host while the container builds its mounts...
    assert order[:3] == ["unshare", "claim_name", "propagation"]
    # ...and the command waits for that; machined's registration does not hold it up
    assert order[-4:] == ["await_host", "register_machine", "reaper", "exec"]
    assert the_plan.steps[-4] == p.AwaitHost(after="name claimed")
    assert order.index("pivot_root") < order.index("await_host")


def test_id_maps_come_before_the_container_goes_on_and_the_name_before_the_command() -> None:
    order = kinds(compile_data({}, USER))
    assert order[:4] == ["unshare", "uid_map", "gid_map", "await_host"]
    # the name is claimed with PID 1's pid, once the Fork made it, while it builds its mounts
    assert order[order.index("fork") + 1] == "claim_name"
    assert order.count("await_host") == 2  # the second: before the command, name claimed


def test_defaults_as_the_original() -> None:
    the_plan = compile_data({})
    assert the_plan.steps[0] == p.Unshare(
        namespaces=("mount", "pid", "ipc", "uts", "cgroup"), pid1=True
    )
    assert "fork" not in kinds(the_plan)  # root: the supervisor makes the PID namespace
    assert "uid_map" not in kinds(the_plan)
    env = step(the_plan, p.Environment)
    assert env.clear is False and ("container", "pflask") in env.set


def test_net_namespace_only_when_asked() -> None:
    assert "net" not in compile_data({}).steps[0].namespaces
    assert "net" in compile_data({"namespaces": {"net": True}}).steps[0].namespaces
    with_link = compile_data({"network": {"interfaces": [{"type": "move", "device": "d0"}]}})
    assert "net" in with_link.steps[0].namespaces
    assert step(with_link, p.MoveLink) == p.MoveLink(device="d0", name="d0")


def test_turning_namespaces_off() -> None:
    the_plan = compile_data(
        {"namespaces": {"mount": False, "pid": False, "ipc": False, "uts": False, "cgroup": False}}
    )
    assert the_plan.steps[0] == p.Unshare(namespaces=())
    assert kinds(the_plan) == [
        "unshare",
        "claim_name",
        "session_keyring",
        "seccomp",
        "capabilities",
        "environment",
        "await_host",
        "exec",
    ]


def test_ordinary_user_gets_a_user_namespace_mapping_itself_to_root() -> None:
    the_plan = compile_data({}, USER)
    assert the_plan.steps[0].namespaces[0] == "user"
    assert step(the_plan, p.UidMap) == p.UidMap(ranges=((0, 1000, 1),), helper=False)
    assert step(the_plan, p.GidMap) == p.GidMap(
        ranges=((0, 1000, 1),), helper=False, setgroups="deny"
    )


def test_ordinary_user_with_a_user_inside_gets_subordinate_ids() -> None:
    the_plan = compile_data({"user": "alice", "root": {"path": "/r"}}, USER)
    assert step(the_plan, p.UidMap) == p.UidMap(
        ranges=((0, 1000, 1), (1, 100000, 65536)), helper=True
    )
    gid_map = step(the_plan, p.GidMap)
    assert gid_map.ranges == ((0, 1000, 1), (1, 200000, 65536)) and gid_map.setgroups == "allow"


def test_user_inside_without_subordinate_ids_is_a_clear_error() -> None:
    with pytest.raises(ManifestError, match="/etc/subuid has no range"):
        compile_data({"user": "alice"}, Context(uid=1000, gid=1000))


def test_explicit_id_map_must_be_among_the_users_ranges() -> None:
    ranges = [{"inside": 0, "outside": 300000, "count": 10}]
    with pytest.raises(ManifestError, match="not among your /etc/subuid ranges"):
        compile_data({"idmap": {"uid": ranges}}, USER)


def test_root_with_an_id_map_gets_a_user_namespace_written_directly() -> None:
    ranges = [{"inside": 0, "outside": 100000, "count": 65536}]
    the_plan = compile_data({"idmap": {"uid": ranges, "gid": ranges}})
    assert step(the_plan, p.UidMap) == p.UidMap(ranges=((0, 100000, 65536),), helper=False)


def test_no_userns_is_refused_for_an_ordinary_user() -> None:
    with pytest.raises(ManifestError, match="not root"):
        compile_data({"namespaces": {"user": False}}, USER)


def test_links_and_loop_mounts_need_root() -> None:
    with pytest.raises(ManifestError, match="needs root"):
        compile_data(
            {"network": {"interfaces": [{"type": "veth", "host": "a", "name": "b"}]}}, USER
        )
    loop = {"mounts": [{"type": "loop", "source": "/i", "target": "/d"}]}
    with pytest.raises(ManifestError, match=r"mounts\[0\]: loop mounts need root"):
        compile_data(loop, USER)
    assert step(compile_data(loop), p.LoopMount).fstype == "auto"


def test_system_mounts_with_a_root() -> None:
    the_plan = compile_data({"root": {"path": "/r"}})
    mounts = {s.target: s for s in the_plan.steps if isinstance(s, p.MountFs)}
    assert set(mounts) == {
        "/proc",
        "/sys",
        "/sys/fs/cgroup",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/run",
    }
    assert "ro" in mounts["/sys"].flags
    assert "newinstance" in mounts["/dev/pts"].data
    assert step(the_plan, p.ReadonlyPaths).paths == compiler.READONLY_PATHS
    assert "/proc/kcore" in step(the_plan, p.MaskPaths).paths
    assert step(the_plan, p.DevNodes).nodes == ("null", "zero", "full", "random", "urandom", "tty")


def sysfs_step(the_plan: p.Plan) -> p.MountFs:
    return next(s for s in the_plan.steps if isinstance(s, p.MountFs) and s.fstype == "sysfs")


def test_sysfs_falls_back_to_a_bind_in_a_user_namespace_without_net() -> None:
    assert sysfs_step(compile_data({"root": {"path": "/r"}}, USER)).fallback_bind == "/sys"
    with_net = compile_data({"root": {"path": "/r"}, "namespaces": {"net": True}}, USER)
    assert sysfs_step(with_net).fallback_bind is None


def test_host_root_gets_only_a_new_proc() -> None:
    mounts = [s for s in compile_data({}).steps if isinstance(s, p.MountFs)]
    assert [m.target for m in mounts] == ["/proc"]


def test_overridden_masked_and_readonly_paths() -> None:
    the_plan = compile_data(
        {"root": {"path": "/r"}, "security": {"masked_paths": [], "readonly_paths": ["/proc/x"]}}
    )
    assert "mask_paths" not in kinds(the_plan)
    assert step(the_plan, p.ReadonlyPaths).paths == ("/proc/x",)


def test_pid1_is_the_command_for_an_init_and_stopped_with_sigrtmin_3() -> None:
    boot = compile_data({"root": {"path": "/r"}, "command": ["/sbin/init"]})
    assert "reaper" not in kinds(boot) and boot.stop_signal == "SIGRTMIN+3"
    job = compile_data({"command": ["sleep", "1"]})
    assert "reaper" in kinds(job) and job.stop_signal == "SIGTERM"
    forced = compile_data({"command": ["sleep", "1"], "pid1": "command"})
    assert "reaper" not in kinds(forced)
    assert "reaper" not in kinds(compile_data({"namespaces": {"pid": False}}))


def test_environment_with_a_root() -> None:
    env = step(
        compile_data({"root": {"path": "/r"}, "env": {"keep": ["LANG"], "set": {"A": "b"}}}),
        p.Environment,
    )
    assert env.clear and env.keep == ("TERM", "LANG") and env.user_vars
    assert dict(env.set) == {"container": "pflask", "PATH": compiler.STANDARD_PATH, "A": "b"}


def test_commands() -> None:
    assert step(compile_data({"command": "make test"}), p.Exec).argv == (
        "/bin/sh",
        "-c",
        "make test",
    )
    assert step(compile_data({"root": {"path": "/r"}}), p.Exec).argv == ("/bin/sh",)
    override = Context(uid=0, gid=0, command=("ls",))
    assert step(compile_data({"command": ["x"]}, override), p.Exec).argv == ("ls",)


def test_targets_are_normalised_so_dotdot_cannot_climb() -> None:
    the_plan = compile_data({"mounts": [{"type": "tmp", "target": "/a/../../../etc/x/."}]})
    assert [s.target for s in the_plan.steps if isinstance(s, p.MountFs)][-1] == "/etc/x"


def test_aufs_gets_a_temporary_work_directory_beside_the_source() -> None:
    the_plan = compile_data({"mounts": [{"type": "aufs", "source": "/srv/up", "target": "/opt"}]})
    assert step(the_plan, p.Overlay) == p.Overlay(
        target="/opt",
        lower=("/opt",),
        upper="/srv/up",
        work="/srv/.up.pflask-work",
        flags=("nodev",),
        lower_inside=True,
        temporary_work=True,
    )


def test_plan_survives_the_cache_wire_format() -> None:
    import marshal

    the_plan = compile_data({"root": {"path": "/r"}, "cgroup": {"memory": "1G"}, "user": "1:2"})
    wire = marshal.loads(marshal.dumps(the_plan.to_wire()))
    assert p.Plan.from_wire(wire) == the_plan


def test_an_ordinary_user_gets_pid_1_by_a_fork_after_the_user_namespace() -> None:
    the_plan = compile_data({}, USER)
    assert the_plan.steps[0].pid1 is False
    order = kinds(the_plan)
    assert order.index("gid_map") < order.index("become_root") < order.index("fork")


# --------------------------------------------------------------------------- the default profile


def test_a_plain_command_keeps_the_default_set_and_the_manifest_changes_it() -> None:
    from pflask.kernel import capabilities

    assert set(step(compile_data({}), p.Capabilities).keep) == capabilities.DEFAULT
    assert set(step(compile_data({}, USER), p.Capabilities).keep) == capabilities.DEFAULT
    changed = compile_data({"capabilities": ["-chown", "+sys_ptrace"]})
    assert set(step(changed, p.Capabilities).keep) == capabilities.DEFAULT - {"chown"} | {
        "sys_ptrace"
    }
    assert set(step(compile_data({"capabilities": "all"}), p.Capabilities).keep) == set(
        capabilities.ALL
    )
    assert step(compile_data({"capabilities": "-all"}), p.Capabilities).keep == ()


def test_a_user_inside_is_bounded_by_the_profile_before_the_switch() -> None:
    # The default set bounds alice, who holds nothing after setuid; capabilities
    # the manifest asks for are kept across the switch (ambient) instead.
    bounded = compile_data({"user": "alice", "root": {"path": "/r"}})
    order = kinds(bounded)
    assert order.index("capabilities") < order.index("switch_user")
    assert not step(bounded, p.Capabilities).ambient
    asked = compile_data({"user": "alice", "capabilities": "-all,+chown"})
    assert kinds(asked).index("switch_user") < kinds(asked).index("capabilities")
    assert step(asked, p.SwitchUser).keep_caps and step(asked, p.Capabilities).ambient


def test_every_writable_mount_is_nodev() -> None:
    the_plan = compile_data(
        {
            "root": {"path": "/r"},
            "mounts": [
                {"type": "bind", "source": "/src", "target": "/b"},
                {"type": "tmp", "target": "/t"},
                {"type": "overlay", "lower": ["/l"], "target": "/o"},
            ],
        }
    )
    assert step(the_plan, p.BindRoot).flags == ("nodev",)
    assert "nodev" in step(the_plan, p.Bind).flags
    assert "nodev" in step(the_plan, p.Overlay).flags
    for mount in [s for s in the_plan.steps if isinstance(s, p.MountFs)]:
        if mount.fstype not in ("devpts",):  # devpts cannot hold a node made by mknod
            assert "nodev" in mount.flags, mount
    ephemeral = compile_data({"root": {"path": "/r", "ephemeral": True}})
    assert step(ephemeral, p.EphemeralRoot).flags == ("nodev",)


def test_the_devices_cgroup_comes_with_cap_sys_admin_as_root() -> None:
    root = {"root": {"path": "/r"}}
    assert not [s for s in compile_data(root).steps if isinstance(s, p.Cgroup)]
    kept = compile_data({**root, "capabilities": "+sys_admin"})
    assert step(kept, p.Cgroup) == p.Cgroup(
        name="t", default_pids=compiler.DEFAULT_PIDS, devices=compiler.DEVICE_RULES
    )
    limited = compile_data({**root, "capabilities": "all", "cgroup": {"pids": 10}})
    assert step(limited, p.Cgroup).devices == compiler.DEVICE_RULES
    # a user namespace refuses device nodes by itself; the host's root is the host's /dev
    assert not [
        s
        for s in compile_data(root | {"capabilities": "all"}, USER).steps
        if isinstance(s, p.Cgroup)
    ]
    assert not [s for s in compile_data({"capabilities": "all"}).steps if isinstance(s, p.Cgroup)]


def test_an_image_root_is_an_overlay_of_its_layers_and_never_the_hosts_root() -> None:
    from pflask.image import prepare
    from pflask.image.store import Resolved

    m = manifest.from_data({"name": "t", "root": {"image": "oci:/img"}})
    with pytest.raises(ManifestError, match=r"root\.image: not resolved"):
        compiler.compile_plan(m, ROOT)
    image = Resolved(digest="sha256:" + "a" * 64, layers=("/s/top", "/s/base"), config={})
    as_root = compiler.compile_plan(prepare.with_image(m, image), ROOT)
    root_step = step(as_root, p.ImageRoot)
    assert (root_step.path, root_step.layers, root_step.userxattr) == (
        "/s/top",
        ("/s/top", "/s/base"),
        False,
    )
    assert root_step.flags == ("nodev",)
    assert step(as_root, p.PivotRoot).path == "/s/top"
    # In a user namespace overlayfs reads the user.overlay.* xattrs the store wrote.
    assert step(compiler.compile_plan(prepare.with_image(m, image), USER), p.ImageRoot).userxattr


def test_root_idmaps_its_store_for_a_map_that_moves_the_layers_ids() -> None:
    """Root's store keeps the layers' own ids: under a map that moves them (an
    `idmap:`, or the default of namespaces.user: true) the container's first
    process, before its user namespace exists, mounts the store idmapped
    with that map (IdmapLayers, step 1, before the Unshare).  A root.upper
    would not be idmapped, and layers in no known store cannot be: refused."""
    from pflask.image import prepare
    from pflask.image.store import Resolved

    image = Resolved(
        digest="sha256:" + "a" * 64, layers=("/s/top", "/s/base"), config={}, store="/s"
    )

    def plan(data: dict[str, Any], ctx: Context = ROOT, img: Resolved = image) -> p.Plan:
        m = manifest.from_data({"name": "t", "root": {"image": "oci:/img"}, **data})
        return compiler.compile_plan(prepare.with_image(m, img), ctx)

    moved = {"uid": [{"inside": 0, "outside": 100000, "count": 65536}]}
    moved["gid"] = [{"inside": 0, "outside": 200000, "count": 65536}]
    mapped = plan({"idmap": moved})
    first, second = mapped.steps[:2]
    assert first == p.IdmapLayers(
        store="/s", uid_ranges=((0, 100000, 65536),), gid_ranges=((0, 200000, 65536),)
    )
    assert isinstance(second, p.Unshare) and "user" in second.namespaces
    assert mapped.first_unshare() == 1
    assert step(mapped, p.ImageRoot).userxattr
    default = plan({"namespaces": {"user": True}})
    assert step(default, p.IdmapLayers).uid_ranges == ((0, *compiler.DEFAULT_ID_RANGE),)
    with pytest.raises(ManifestError, match=r": root\.upper: root\.image: .*0->100000 \(65536\)"):
        plan({"idmap": moved, "root": {"image": "oci:/img", "upper": "/keep"}})
    unstored = image.replace(store=None)
    with pytest.raises(ManifestError, match=r": idmap: root\.image: .*no image store"):
        plan({"idmap": moved}, img=unstored)
    same = {"uid": [{"inside": 0, "outside": 0, "count": 65536}]}
    same["gid"] = same["uid"]
    kept = plan({"idmap": same})
    assert step(kept, p.ImageRoot).userxattr
    assert not [s for s in kept.steps if isinstance(s, p.IdmapLayers)]  # nothing to move

    # An ordinary user's store maps 0 -> the user, 1.. -> its first range.
    helpers = USER.replace(id_helpers=True)
    assert step(plan({}, helpers), p.ImageRoot).layers == ("/s/top", "/s/base")
    only_self = {"uid": [{"inside": 0, "outside": 1000, "count": 1}]}
    only_self["gid"] = [{"inside": 0, "outside": 1000, "count": 1}]
    step(plan({"idmap": only_self}, USER), p.ImageRoot)  # flattened store: the same map
    with pytest.raises(ManifestError, match=r": idmap: root\.image: .*uids 1-65536 inside"):
        plan({"idmap": only_self}, helpers)
    # `user:` naming the user keeps its uid inside: not the store's map.
    named = USER.replace(id_helpers=True, name="alice")
    with pytest.raises(ManifestError, match=r": user: root\.image: .*`user:` naming you"):
        plan({"user": "alice"}, named)
    assert step(plan({"user": "0"}, named), p.ImageRoot).userxattr  # root inside: the store's
    # An ordinary user cannot idmap a host directory: its store is mapped already.
    assert not [s for s in plan({}, helpers).steps if isinstance(s, p.IdmapLayers)]
