"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status the API would use.

Every error the server sends says `x-should-retry: false` unless retrying is safe and useful:
the official client retries 5xx and 429 on its own, and a retried request would be answered,
captured and (upstream) paid for a second time. The server already retried what was safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

NO_RETRY = {"x-should-retry": "false"}


@dataclass(eq=False)  # raised and caught, never compared
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None  # an upstream error body, relayed as the teacher sent it

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"

    def payload(self) -> dict:
        if self.body is not None:
            return self.body
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            self.payload(), status_code=self.status, headers={**NO_RETRY, **self.headers, **(headers or {})}
        )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
