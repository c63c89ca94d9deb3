"""Errors that end pflask with a one-line message and a documented status."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_SETUP = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127


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
        return f"{place}{field}{self.message}"


class ManifestErrors(PflaskError):
    """Several manifest errors at once (`pflask validate` reports them all)."""

    status = EXIT_USAGE

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class SetupError(PflaskError):
    """Building the container failed at a plan step."""

    status = EXIT_SETUP
