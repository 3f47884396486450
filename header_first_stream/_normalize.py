"""`normalize_response`: give a plain-dict result the `_hidden_params` that hooks expect.

LiteLLM-style post-call hooks attach headers through
``response._hidden_params["additional_headers"]`` and skip any response without that
attribute, as a plain `dict` is. `HiddenParamsDict` is a `dict` in every way that
serialisation sees (``json.dumps``, Starlette's `JSONResponse`, FastAPI, pydantic,
orjson), and carries ``_hidden_params`` as a slot, outside the mapping.
"""

from __future__ import annotations

from typing import Any

from ._headers import render_headers

__all__ = ["HiddenParamsDict", "get_additional_headers", "normalize_response"]


class HiddenParamsDict(dict[str, Any]):
    """A `dict` that also carries ``_hidden_params``; compares and serialises as its items."""

    __slots__ = ("_hidden_params",)

    _hidden_params: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hidden_params = {"additional_headers": {}}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle and copy keep the hidden params, which live outside the mapping.
        return (type(self), (dict(self),), {"_hidden_params": self._hidden_params})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._hidden_params = state["_hidden_params"]


def normalize_response(obj: Any) -> Any:
    """Return ``obj`` in a shape that carries ``_hidden_params``.

    A plain `dict` becomes a `HiddenParamsDict` equal to it, with
    ``_hidden_params == {"additional_headers": {}}``. An object that already has
    ``_hidden_params`` (a `HiddenParamsDict`, a pydantic model such as LiteLLM's
    ``ModelResponse``) is returned unchanged, so calling this twice is harmless.

    Raises:
        TypeError: ``obj`` is neither a plain `dict` nor has ``_hidden_params``.
    """
    if hasattr(obj, "_hidden_params"):
        return obj
    if type(obj) is dict:
        return HiddenParamsDict(obj)
    raise TypeError(
        f"normalize_response() takes a plain dict or an object with _hidden_params, "
        f"got {type(obj).__name__}; convert it first, e.g. normalize_response(dict(obj))"
    )


def get_additional_headers(obj: Any) -> dict[str, str]:
    """Return the headers a hook attached to ``obj`` through ``_hidden_params``.

    Works on every shape a handler may hold: a `HiddenParamsDict`, an object with
    ``_hidden_params`` (a missing or ``None`` ``additional_headers`` gives ``{}``), or
    anything without it (``{}``). Names are lower-cased and `int` values rendered as
    decimal text, ready for ``response.headers.update(...)``.

    Raises:
        HeaderValidationError: A header may not be sent (e.g. a value contains CR/LF).
    """
    hidden = getattr(obj, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return {}
    headers = hidden.get("additional_headers") or {}
    return {
        name.decode("latin-1"): value.decode("latin-1") for name, value in render_headers(headers)
    }
