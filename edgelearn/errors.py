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
