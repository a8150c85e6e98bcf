"""The server's refusals: :class:`RequestError`, carried to the client as an OpenAI-style JSON error
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status naming the field at fault."""

from __future__ import annotations

__all__ = ["RequestError"]


class RequestError(Exception):
    """A request the server refuses (never a server fault).

    Args:
        status: HTTP status (400 bad field, 401 wrong key, 404 no such model or path, 413 too large, ...).
        message: One line naming the problem.
        param: The field at fault, as a path into the request body (``"steering[0].layer"``, ``"messages"``),
            or a header name (``"Authorization"``); None when no single field is.
        code: Short machine-readable reason.
        type: OpenAI error type.
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - the OpenAI field's name
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
