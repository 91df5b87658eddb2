"""The management service's one error type, carrying the HTTP status it maps to."""


class AdminError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
