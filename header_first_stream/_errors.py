"""The error responses this package sends in place of a response: one place for them.

Short and generic on purpose: an exception is logged, never sent. Each carries the
request's late headers (without a ``content-type``, which described the response that was
not sent), and is framed by its own body.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse, Response

from ._headers import HeaderValidationError, frame_complete_response, merge_headers
from ._types import BYTES_TYPES, EarlyErrorHandler, RawHeaders

__all__ = ["early_error_response", "plain_error", "without_content_type"]

logger = logging.getLogger("header_first_stream")


def plain_error(reason: str, late: RawHeaders) -> tuple[RawHeaders, bytes]:
    """The head and body of an error answered instead of the response.

    Short and generic on purpose: the exception is logged, never sent. The request's late
    headers go along, except a ``content-type``, which described the response that was
    not sent (and would be sent twice).
    """
    body = reason.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *without_content_type(late),
    ]
    return headers, body


def without_content_type(late: RawHeaders) -> RawHeaders:
    """``late`` without its ``content-type``, for a response other than the one it described."""
    return [pair for pair in late if pair[0] != b"content-type"]


def _default_early_error() -> Response:
    return JSONResponse(
        {
            "error": {
                "message": "The upstream service failed before sending a response.",
                "type": "upstream_error",
                "code": 502,
            }
        },
        status_code=502,
    )


def early_error_response(
    handler: EarlyErrorHandler | None, exc: Exception, late: RawHeaders, path: str
) -> tuple[int, RawHeaders, bytes | memoryview]:
    """The status, headers and body answered when the body failed before its first chunk.

    ``handler``'s `Response`, or the default ``502`` when it returns ``None``, fails, or
    returns a response without a body or with a header that may not be sent.
    """
    response: Response | None = None
    if handler is not None:
        try:
            response = handler(exc)
        except Exception:
            logger.exception("early_error_handler failed for %s", path)
    if response is None:
        logger.error("body iterator failed before its first chunk for %s", path, exc_info=exc)
        response = _default_early_error()
    else:
        logger.info(
            "body iterator failed before its first chunk for %s: answered %s",
            path,
            response.status_code,
        )
    if not isinstance(getattr(response, "body", None), BYTES_TYPES):
        logger.error(
            "early_error_handler returned %s for %s, which has no body; answered 502 "
            "(return a Response with a body, such as JSONResponse)",
            type(response).__name__,
            path,
        )
        response = _default_early_error()
    body: bytes | memoryview = response.body
    try:
        # This package sends that response itself: its framing is computed here.
        own = frame_complete_response(response.status_code, response.raw_headers, body, path)
    except HeaderValidationError:
        logger.exception("invalid header in the early error response for %s", path)
        response = _default_early_error()
        body = response.body
        own = response.raw_headers
    return response.status_code, merge_headers(list(own), without_content_type(late)), body
