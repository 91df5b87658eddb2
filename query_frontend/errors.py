"""The query frontend's one error type: an HTTP status, Clipper's error kind, and the cause."""

import orjson

JSON_ERROR = "Json error"
QUERY_PROCESSING_ERROR = "Query processing error"
NOT_FOUND = "Not found"
BAD_REQUEST = "Bad request"
INTERNAL_ERROR = "Internal error"


class QueryError(Exception):
    def __init__(self, error: str, cause: str, status: int = 400) -> None:
        super().__init__(cause)
        self.error = error
        self.cause = cause
        self.status = status

    def body(self) -> bytes:
        """The error reply's JSON body, the same from every route and protocol."""
        return orjson.dumps({"error": self.error, "cause": self.cause})


def internal_error() -> QueryError:
    """What a client is told of a bug in the frontend: that there was one, nothing more."""
    return QueryError(INTERNAL_ERROR, "An unexpected error occurred!", status=500)
