"""One error type for bad user input: its message is one line naming the file and the problem."""


class DataError(ValueError):
    """Raised for unreadable images, bad metadata rows, unknown columns, empty labels..."""
