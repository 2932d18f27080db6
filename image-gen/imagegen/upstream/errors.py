"""How talking to the upstream fails, modelled like urllib3/httpx: one base exception and a
few precise subclasses (connection, timeout, unusable answer, HTTP status)."""

from __future__ import annotations


class OpenAIError(Exception):
    """Base of every failure talking to the upstream."""


class APIConnectionError(OpenAIError):
    """No usable answer: the connection failed, was refused or dropped."""


class APITimeoutError(APIConnectionError):
    """The upstream did not answer within the timeout or the request's deadline."""


class InvalidResponseError(OpenAIError):
    """The upstream answered, but with something we cannot use."""


class APIStatusError(OpenAIError):
    """The upstream answered with an HTTP error status and (usually) an error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.should_retry = should_retry
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.request_id = request_id
