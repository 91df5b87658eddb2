"""The query frontend's one error type: an HTTP status, Clipper's error kind, and the cause."""

JSON_ERROR = "Json error"
QUERY_PROCESSING_ERROR = "Query processing error"
NOT_FOUND = "Not found"


class QueryError(Exception):
    def __init__(self, error: str, cause: str, status: int = 400) -> None:
        super().__init__(cause)
        self.error = error
        self.cause = cause
        self.status = status
