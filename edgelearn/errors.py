"""User-facing errors: one line that says where (file, line, field) and what was expected."""


def _rebuild(cls, args, state):
    """Unpickle an EdgelearnError (any subclass) without calling its __init__: args and attributes as they were."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class EdgelearnError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero.

    Every subclass survives pickling (a sweep worker's error reaches the parent, a Dask future keeps it) with its
    message and attributes, whatever its __init__ takes: the default reduction calls cls(*args), which fails for
    subclasses whose __init__ takes other arguments than the message (InputError, BoardReportedError).
    """

    def __reduce__(self):
        return _rebuild, (type(self), self.args, dict(self.__dict__))


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


MAX_TEXT_BYTES = 16 * 2**20  # config, spec and card files: ours are a few KB; anything this large is not one


class EdgelearnWarning(UserWarning):
    """Input was shortened or capped (e.g. a trace fitted on a subset); the CLI prints it as one line."""


def read_text_file(path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """A small UTF-8 text file (config, spec, card), or a one-line InputError: missing, a directory, unreadable,
    larger than `limit` bytes, or not UTF-8 text."""
    from pathlib import Path

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputError(path, f"{size:,} bytes: too large for a {what} (the limit is {limit:,})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, f"is a directory, expected a {what}") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a text file (byte {exc.start} is not UTF-8): expected a {what}") from None


def read_toml(path) -> dict:
    """A TOML file as a dict, or a one-line InputError (missing file, binary, syntax error with its line)."""
    import tomllib

    text = read_text_file(path, "TOML file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"not valid TOML ({exc})") from None
    except RecursionError:
        raise InputError(path, "not valid TOML (nested too deeply)") from None


def _shown(value) -> str:
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def error_field(loc, default_field: str = "config") -> str:
    """A pydantic error location as a field path: ('model', 'piecewise_up', 3) -> 'model.piecewise_up[3]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or default_field


def error_message(err: dict, show_input: bool = True) -> str:
    """One pydantic error as the rule broken and the value found: 'Input should be greater than 0 (got -1.0)',
    'expected a finite number, got NaN'."""
    kind, value = err.get("type", ""), err.get("input")
    if kind == "missing":
        return "missing"
    if kind == "finite_number":
        return f"expected a finite number, got {_shown(value)}"
    message = err.get("msg", "invalid value").removeprefix("Value error, ")
    if show_input and isinstance(value, (bool, int, float, str)) and kind not in ("extra_forbidden", "value_error"):
        message += f" (got {_shown(value)})"
    return message


def validation_error(source, exc, default_field: str = "config", suffix: str = "") -> InputError:
    """The first problem of a pydantic ValidationError as a one-line InputError naming the source and field."""
    err = exc.errors()[0]
    message = error_message(err, show_input=not suffix)  # a suffix (a sweep's run values) already shows it
    return InputError(source, message + suffix, field=error_field(err["loc"], default_field))


def bundled_files(folder: str, pattern: str) -> dict:
    """Files shipped with the package under traces/FOLDER (installed as edgelearn.bundled), by stem: cards, sweep
    specs, run configs. From a source checkout without an installed copy, the checkout's files."""
    from importlib import resources
    from pathlib import Path

    try:
        root = Path(str(resources.files("edgelearn.bundled"))) / folder
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parent.parent / "traces" / folder
    return {p.stem: p for p in sorted(root.glob(pattern))}
