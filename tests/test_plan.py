"""pflask.compile.plan: the records the compiler hands the supervisor and the container."""

from __future__ import annotations

from pflask.compile import plan as p

SUPERVISION = {"terminal": "auto", "detach": False, "stop_signal": "SIGTERM", "stop_timeout": 10.0}


def test_renamed_replaces_the_name_wherever_the_compiler_put_it() -> None:
    the_plan = p.Plan(
        name="pflask-PID",
        steps=(
            p.Unshare(namespaces=("mount", "uts"), pid1=True),
            p.RegisterMachine(name="pflask-PID", root="/srv/root"),
            p.Hostname(name="pflask-PID"),
            p.Exec(argv=("echo", "pflask-PID")),
        ),
        **SUPERVISION,
        root="/srv/root",
    )
    renamed = the_plan.renamed("pflask-PID", "pflask-42")
    assert renamed.name == "pflask-42"
    assert renamed.steps[1] == p.RegisterMachine(name="pflask-42", root="/srv/root")
    assert renamed.steps[2] == p.Hostname(name="pflask-42")
    # the command's arguments are the user's own, whatever they say
    assert renamed.steps[3] == p.Exec(argv=("echo", "pflask-PID"))
    assert the_plan.renamed("other", "x") is the_plan


def test_wire_form_round_trips_every_step_kind() -> None:
    the_plan = p.Plan(
        name="box",
        steps=(p.Unshare(namespaces=("mount",)), p.AwaitHost(), p.Exec(argv=("true",))),
        **SUPERVISION,
    )
    assert p.Plan.from_wire(the_plan.to_wire()) == the_plan
    assert set(p.STEPS) >= {"await_host", "unshare", "exec"}
