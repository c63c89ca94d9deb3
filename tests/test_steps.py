"""pflask.run.steps and the supervisor's host steps: one handler for each step kind, on its side."""

from __future__ import annotations

import errno

from pflask.compile import plan as p
from pflask.run import steps, supervisor
from pflask.run.container import step_error


def test_every_container_step_kind_has_a_handler_and_every_host_step_kind_a_host_handler() -> None:
    container = {kind for kind, cls in p.STEPS.items() if cls.where == p.CONTAINER}
    host = {kind for kind, cls in p.STEPS.items() if cls.where == p.HOST}
    assert set(steps.HANDLERS) == container
    assert set(supervisor.HOST_STEPS) == host


def test_preload_names_only_pflask_modules_that_exist() -> None:
    for handler in steps.HANDLERS.values():
        for name in handler.modules:
            __import__(f"pflask.{name}")


def test_a_failed_step_is_one_line_naming_it_and_a_bug_says_its_type() -> None:
    step = p.Hostname(name="box")
    refused = OSError(errno.EPERM, "Operation not permitted")
    assert (
        step_error(7, step, refused) == "step 7 (hostname box): [Errno 1] Operation not permitted"
    )
    assert step_error(7, step, TypeError("'NoneType' object is not iterable")) == (
        "step 7 (hostname box): 'NoneType' object is not iterable (TypeError)"
    )
