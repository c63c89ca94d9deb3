"""Errors that end pflask with a one-line message and a documented status."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_SETUP = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127

SHOWN = 80
"""At most this many characters of a value are echoed in a message: a manifest
may hold a megabyte-long string, and one line of error must stay one line."""


def shown(value: object) -> str:
    """`repr(value)`, cut to SHOWN characters, saying how long it really was."""
    if isinstance(value, str) and len(value) > SHOWN:
        return f"{repr(value[:SHOWN])[: SHOWN - 3]}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 3]}..."


def shown_path(path: str) -> str:
    """A path quoted like `shown`, but cut at its start: the file's own name
    at the end is what tells the reader which one it is."""
    if len(path) <= SHOWN:
        return repr(path)
    return f"'...{path[-(SHOWN - 5) :]}' ({len(path)} characters)"


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\n`, `\\x1b`), so a value
    can neither split a message into lines nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PflaskError(Exception):
    """An error the user gets as `pflask: <message>` and exit `status`."""

    status = EXIT_SETUP


class UsageError(PflaskError):
    """Bad command-line usage."""

    status = EXIT_USAGE


class ManifestError(PflaskError):
    """A problem in a manifest, placed as `FILE:LINE:COL: field: message`."""

    status = EXIT_USAGE

    def __init__(
        self,
        message: str,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.path: tuple[str | int, ...] | None = None
        """The field path in the merged manifest, when the loader placed it."""
        super().__init__(self.__str__())

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = self.file
            if self.line is not None:
                place += f":{self.line}"
                if self.column is not None:
                    place += f":{self.column}"
            place += ": "
        field = f"{self.field}: " if self.field else ""
        return printable(f"{place}{field}{self.message}")


class ManifestErrors(PflaskError):
    """Several manifest errors at once (`pflask validate` reports them all)."""

    status = EXIT_USAGE

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class SetupError(PflaskError):
    """Building the container failed at a plan step."""

    status = EXIT_SETUP
