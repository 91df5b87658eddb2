"""The exceptions clipper_admin raises, as Clipper's clients catch them."""


class ClipperException(Exception):
    """The base of every clipper_admin error; the text is in .msg too."""

    def __init__(self, msg: str, *args: object) -> None:
        self.msg = msg
        super().__init__(msg, *args)

    def __str__(self) -> str:
        return self.msg


class UnconnectedException(ClipperException):
    def __init__(self, *args: object) -> None:
        super().__init__(
            "No connection to Clipper cluster. Call ClipperConnection.connect to "
            "connect to an existing cluster or ClipperConnnection.start_clipper to "
            "create a new one",
            *args,
        )
