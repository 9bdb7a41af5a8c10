"""User-facing errors: one line that says where (file, line, field) and what was expected."""


class EdgelearnError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""


class InputError(EdgelearnError):
    """Bad content in a file the user gave us, located by path and (when known) line and field."""

    def __init__(self, path, message, line=None, field=None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.detail = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"field '{field}': {message}"
        super().__init__(f"{where}: {what}")


def read_toml(path) -> dict:
    """A TOML file as a dict, or a one-line InputError (missing file, syntax error with its line)."""
    import tomllib
    from pathlib import Path

    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"not valid TOML ({exc})") from None


def validation_error(source, exc, default_field: str = "config", suffix: str = "") -> InputError:
    """The first problem of a pydantic ValidationError as a one-line InputError naming the source and field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or default_field
    return InputError(source, err["msg"] + suffix, field=where)
