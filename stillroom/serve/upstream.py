"""The teacher behind the server: one pooled async HTTP client, retrying only what the teacher provably did not do.

A connect error means the request never arrived, and a 429 was refused before any work: those
are retried (a 429 only when its Retry-After is short). Anything else (a 5xx, a timeout after the
request went out) may have been worked on and billed, so it is reported, never repeated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

from stillroom.config import ServeParams
from stillroom.serve.errors import ApiError

# Headers of the caller that mean something to the teacher; nothing else is forwarded.
FORWARDED = ("openai-organization", "openai-project")


@dataclass(eq=False)  # raised and caught, never compared
class UpstreamFailure(ApiError):
    """The teacher could not answer; `degradable` when a student answer may stand in for it."""

    degradable: bool = True


def _retry_after(response: httpx.Response) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value is not None:
            try:
                return float(value) / scale
            except ValueError:
                return None
    return None


def failure_from_response(response: httpx.Response, body: bytes) -> UpstreamFailure:
    """A teacher's non-200 answer as the error the caller gets: 4xx relayed as sent, 5xx as a 502."""
    try:
        payload = httpx.Response(200, content=body).json()
    except ValueError:
        payload = None
    upstream_message = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        upstream_message = str(payload["error"].get("message", ""))[:300]
    else:
        payload = None
    status = response.status_code
    if status == 429:
        headers = {"retry-after": response.headers["retry-after"]} if "retry-after" in response.headers else {}
        return UpstreamFailure(
            429,
            f"The teacher is rate limited: {upstream_message}",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers=headers,
            body=payload,
        )
    if status >= 500:
        return UpstreamFailure(
            502, f"The teacher answered HTTP {status}: {upstream_message}", "server_error", "upstream_error"
        )
    return UpstreamFailure(
        status, upstream_message or f"The teacher answered HTTP {status}", body=payload, degradable=False
    )


class Upstream:
    def __init__(self, settings: ServeParams, server_key: str | None):
        self.settings = settings
        self._server_key = server_key
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=min(10.0, settings.upstream_timeout_s))
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            base_url=settings.upstream_base_url.rstrip("/"), timeout=timeout, limits=limits
        )

    async def close(self) -> None:
        await self._client.aclose()

    def headers(self, caller: Mapping[str, str]) -> dict[str, str]:
        """Whose key goes upstream: the server's own, or the caller's when serve.upstream_auth is `caller`."""
        out = {"content-type": "application/json"}
        if self.settings.upstream_auth == "caller":
            if caller.get("authorization"):
                out["authorization"] = caller["authorization"]
        elif self._server_key:
            out["authorization"] = f"Bearer {self._server_key}"
        out.update({name: caller[name] for name in FORWARDED if name in caller})
        return out

    async def _send(self, body: dict, headers: dict[str, str], stream: bool) -> httpx.Response:
        """POST /chat/completions with the safe retries; returns a 200 response or raises UpstreamFailure."""
        request = self._client.build_request("POST", "/chat/completions", json=body, headers=headers)
        for attempt in range(self.settings.upstream_retries + 1):
            last = attempt == self.settings.upstream_retries
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:
                if last:
                    raise UpstreamFailure(
                        502,
                        f"The teacher is unreachable ({type(err).__name__}).",
                        "server_error",
                        "upstream_unreachable",
                    ) from err
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            except httpx.TimeoutException as err:
                raise UpstreamFailure(
                    504, "The teacher did not answer in time.", "server_error", "upstream_timeout"
                ) from err
            except httpx.TransportError as err:
                raise UpstreamFailure(
                    502, f"The teacher's connection failed ({type(err).__name__}).", "server_error", "upstream_error"
                ) from err
            if response.status_code == 200:
                if not stream:
                    await response.aread()
                return response
            error_body = await response.aread()
            await response.aclose()
            wait = _retry_after(response)
            short_429 = response.status_code == 429 and wait is not None
            if not last and short_429 and wait <= self.settings.upstream_max_retry_wait_s:
                await asyncio.sleep(wait)
                continue
            raise failure_from_response(response, error_body)
        raise AssertionError("unreachable")

    async def complete(self, body: dict, caller: Mapping[str, str]) -> tuple[dict, float]:
        """A plain completion: the teacher's chat.completion and how long it took (ms)."""
        started = time.perf_counter()
        plain = {key: value for key, value in body.items() if key != "stream_options"}  # only valid when streamed
        response = await self._send({**plain, "stream": False}, self.headers(caller), stream=False)
        try:
            completion = response.json()
        except ValueError as err:
            raise UpstreamFailure(502, "The teacher's answer is not JSON.", "server_error", "upstream_error") from err
        return completion, (time.perf_counter() - started) * 1000

    async def open_stream(self, body: dict, caller: Mapping[str, str]) -> httpx.Response:
        """A streamed completion, opened: the status is known (and errors raised) before the caller's first byte.

        Usage is always asked for, so the captured exchange has token counts; the caller's stream
        gets the usage chunk only if it asked (see the relay in app.py)."""
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        return await self._send({**body, "stream": True, "stream_options": options}, self.headers(caller), stream=True)

    async def lines(self, response: httpx.Response) -> AsyncIterator[str]:
        try:
            async for line in response.aiter_lines():
                yield line
        finally:
            await response.aclose()

    async def models(self, caller: Mapping[str, str]) -> list[dict]:
        """The teacher's model list (the pass-through entries of /v1/models); empty when it has none."""
        try:
            response = await self._client.get("/models", headers=self.headers(caller), timeout=3.0)
            data = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []
        return [entry for entry in data if isinstance(entry, dict) and "id" in entry]
