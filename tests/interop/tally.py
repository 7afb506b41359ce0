"""What the Python interop scripts count: responses by status, and the first few errors."""


class Tally:
    """Responses by status (a request that raised counts as "error") and up to five errors."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.errors: list[str | None] = []

    def status(self, code: int | str) -> None:
        key = str(code)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def note(self, error: str | None) -> None:
        if len(self.errors) < 5:
            self.errors.append(error)

    def failed(self, error: Exception) -> None:
        """A request that raised: the client's own report is what the tests look at."""
        self.status("error")
        self.note(str(error))
