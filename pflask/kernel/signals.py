"""Signal names and numbers, without the `signal` module.

`import signal` builds enums and costs ~8 ms at every start; the builtin
`_signal` module underneath it has the same functions and constants.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
else:
    import _signal

FORWARDED = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)


def signal_number(name: str) -> int:
    """SIGTERM, TERM, term, 15, SIGRTMIN+3 and RTMIN+3 all name a signal."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number <= _signal.SIGRTMAX:
            return number
        raise ValueError(f"no signal number {number}")
    text = text.removeprefix("SIG")
    for base in ("RTMIN", "RTMAX"):
        if text.startswith(base):
            offset_text = text[len(base) :] or "+0"
            sign, digits = offset_text[0], offset_text[1:]
            if sign in "+-" and digits.isdigit():
                start: int = getattr(_signal, "SIG" + base)
                number = start + int(digits) * (1 if sign == "+" else -1)
                if _signal.SIGRTMIN <= number <= _signal.SIGRTMAX:
                    return number
            raise ValueError(f"{name!r} is outside SIGRTMIN..SIGRTMAX")
    found = getattr(_signal, "SIG" + text, None)
    if not isinstance(found, int) or text.startswith("_"):
        raise ValueError(f"unknown signal {name!r}")
    return found
