"""`normalize_response`, `HiddenParamsDict` and `get_additional_headers` (`_normalize.py`).

A normalized dict must be indistinguishable from the original to every serialiser a
gateway uses, while carrying ``_hidden_params`` for LiteLLM-style hooks.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections import OrderedDict, defaultdict
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi import Response as FastAPIResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, PrivateAttr, TypeAdapter
from starlette.responses import JSONResponse

from header_first_stream import (
    HeaderValidationError,
    HiddenParamsDict,
    get_additional_headers,
    normalize_response,
)

MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Grüße, 世界"}],
    "usage": {"input_tokens": 12, "output_tokens": 3, "cache": None, "ratio": 0.25},
    "stop": True,
}


def hooked(payload: dict[str, Any]) -> HiddenParamsDict:
    """Normalize, then attach headers the way LiteLLM's rate limiter hook does."""
    result = normalize_response(payload)
    assert isinstance(result, HiddenParamsDict)
    result._hidden_params["additional_headers"]["x-ratelimit-secret-remaining"] = 5999
    result._hidden_params["model_id"] = "hidden-model-id"
    return result


class ModelResponse(BaseModel):
    """Shaped like LiteLLM's `ModelResponse`: `_hidden_params` is a private attribute."""

    id: str
    _hidden_params: dict[str, Any] = PrivateAttr(default_factory=dict)


# --- normalize_response ----------------------------------------------------------------


def test_plain_dict_becomes_an_equal_dict_carrying_empty_hidden_params() -> None:
    original = copy.deepcopy(MESSAGE)
    result = normalize_response(original)
    assert type(result) is HiddenParamsDict
    assert isinstance(result, HiddenParamsDict)
    assert issubclass(HiddenParamsDict, dict)
    assert result == MESSAGE
    assert dict(result) == MESSAGE
    assert result._hidden_params == {"additional_headers": {}}
    assert original == MESSAGE  # the original is not changed
    assert result is not original


def test_hidden_params_are_outside_the_mapping() -> None:
    result = hooked(MESSAGE)
    assert "_hidden_params" not in result
    assert list(result) == list(MESSAGE)
    assert len(result) == len(MESSAGE)
    assert not hasattr(result, "__dict__")


def test_normalize_is_idempotent() -> None:
    once = hooked(MESSAGE)
    assert normalize_response(once) is once
    assert once._hidden_params["additional_headers"] == {"x-ratelimit-secret-remaining": 5999}


def test_objects_that_carry_hidden_params_are_returned_unchanged() -> None:
    model = ModelResponse(id="chatcmpl-1")
    model._hidden_params["additional_headers"] = {"x-a": "1"}
    assert normalize_response(model) is model
    assert model._hidden_params == {"additional_headers": {"x-a": "1"}}

    class Carrier:
        _hidden_params = None

    carrier = Carrier()
    assert normalize_response(carrier) is carrier


@pytest.mark.parametrize(
    ("obj", "name"),
    [
        ([1, 2], "list"),
        ("text", "str"),
        (OrderedDict(a=1), "OrderedDict"),
        (defaultdict(int), "defaultdict"),
        (None, "NoneType"),
    ],
)
def test_anything_else_is_a_type_error_that_says_what_to_do(obj: object, name: str) -> None:
    with pytest.raises(TypeError) as info:
        normalize_response(obj)
    assert str(info.value) == (
        "normalize_response() takes a plain dict or an object with _hidden_params, "
        f"got {name}; convert it first, e.g. normalize_response(dict(obj))"
    )


def test_hidden_params_dict_built_directly_behaves_as_dict() -> None:
    built = HiddenParamsDict({"a": 1}, b=2)
    assert built == {"a": 1, "b": 2}
    assert built._hidden_params == {"additional_headers": {}}


# --- serialisation: identical to the original, never showing _hidden_params ------------


def serialisations(obj: Any) -> dict[str, bytes]:
    return {
        "json": json.dumps(obj).encode(),
        "json-compact": json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(),
        "starlette": bytes(JSONResponse(obj).body),
        "pydantic-any": TypeAdapter(Any).dump_json(obj),
        "pydantic-dict": TypeAdapter(dict[str, Any]).dump_json(obj),
        "orjson": orjson.dumps(obj),
    }


def test_every_serialiser_gives_the_original_bytes_and_no_hidden_params() -> None:
    normalized = hooked(MESSAGE)
    assert serialisations(normalized) == serialisations(MESSAGE)
    for output in serialisations(normalized).values():
        assert b"_hidden_params" not in output
        assert b"x-ratelimit-secret" not in output
        assert b"hidden-model-id" not in output
    assert TypeAdapter(Any).dump_python(normalized) == MESSAGE
    assert type(TypeAdapter(Any).dump_python(normalized)) is dict


@pytest.mark.anyio
async def test_fastapi_serialises_it_as_the_original_and_handler_applies_hook_headers() -> None:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(response: FastAPIResponse) -> Any:
        result = hooked(MESSAGE)
        response.headers.update(get_additional_headers(result))
        return result

    @app.post("/v1/plain")
    async def plain() -> Any:
        return MESSAGE

    @app.post("/v1/typed")
    async def typed() -> dict[str, Any]:
        return hooked(MESSAGE)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        normalized = await client.post("/v1/messages")
        original = await client.post("/v1/plain")
        typed_response = await client.post("/v1/typed")
    assert normalized.status_code == 200
    assert normalized.content == original.content == typed_response.content
    assert normalized.json() == MESSAGE
    assert b"_hidden_params" not in normalized.content
    assert normalized.headers["x-ratelimit-secret-remaining"] == "5999"
    assert "x-ratelimit-secret-remaining" not in original.headers


# --- copies ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_keeps_hidden_params(protocol: int) -> None:
    normalized = hooked(MESSAGE)
    restored = pickle.loads(pickle.dumps(normalized, protocol=protocol))
    assert type(restored) is HiddenParamsDict
    assert restored == MESSAGE
    assert restored._hidden_params == normalized._hidden_params


def test_copy_and_deepcopy_keep_hidden_params() -> None:
    normalized = hooked(MESSAGE)
    shallow = copy.copy(normalized)
    deep = copy.deepcopy(normalized)
    for duplicate in (shallow, deep):
        assert type(duplicate) is HiddenParamsDict
        assert duplicate == MESSAGE
        assert duplicate._hidden_params == normalized._hidden_params
    deep._hidden_params["additional_headers"]["x-only-deep"] = "1"
    deep["usage"]["input_tokens"] = 0
    assert "x-only-deep" not in normalized._hidden_params["additional_headers"]
    assert normalized["usage"]["input_tokens"] == 12


# --- get_additional_headers ------------------------------------------------------------


def test_additional_headers_of_a_normalized_dict_are_rendered() -> None:
    assert get_additional_headers(hooked(MESSAGE)) == {"x-ratelimit-secret-remaining": "5999"}
    assert get_additional_headers(normalize_response({})) == {}


def test_additional_headers_of_a_model_are_lower_cased_with_ints_as_text() -> None:
    model = ModelResponse(id="chatcmpl-1")
    model._hidden_params["additional_headers"] = {
        "X-RateLimit-Remaining-Tokens": 99955,
        "x-litellm-model-id": "abc",
    }
    assert get_additional_headers(model) == {
        "x-ratelimit-remaining-tokens": "99955",
        "x-litellm-model-id": "abc",
    }


class Holder:
    def __init__(self, hidden: Any) -> None:
        self._hidden_params = hidden


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(ModelResponse(id="x"), id="no-additional-headers"),
        pytest.param(Holder({"additional_headers": None}), id="additional-headers-none"),
        pytest.param(Holder({"additional_headers": {}}), id="additional-headers-empty"),
        pytest.param(Holder(None), id="hidden-params-none"),
        pytest.param(Holder("not a dict"), id="hidden-params-not-a-dict"),
        pytest.param({"a": 1}, id="plain-dict"),
        pytest.param(object(), id="object"),
    ],
)
def test_no_additional_headers_gives_an_empty_dict(obj: object) -> None:
    assert get_additional_headers(obj) == {}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-a": "1\r\nx-injected: 1"}, "invalid header value for 'x-a': contains '\\r'"),
        ({"x a": "1"}, "invalid header name 'x a'"),
        ({"x-a": 1.0}, "invalid header value for 'x-a': float"),
    ],
)
def test_invalid_additional_header_raises(headers: dict[str, Any], message: str) -> None:
    with pytest.raises(HeaderValidationError) as info:
        get_additional_headers(Holder({"additional_headers": headers}))
    assert str(info.value).startswith(message)


# --- properties ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


@settings(deadline=None, max_examples=100)
@given(payload=json_dicts)
def test_any_json_like_dict_round_trips_through_every_serialiser(payload: dict[str, Any]) -> None:
    normalized = normalize_response(payload)
    normalized._hidden_params["additional_headers"]["x-hidden"] = "1"
    assert normalized == payload
    assert serialisations(normalized) == serialisations(payload)
    assert json.loads(json.dumps(normalized)) == json.loads(json.dumps(payload))
    assert normalize_response(normalized) is normalized
    restored = pickle.loads(pickle.dumps(normalized))
    assert restored == payload
    assert restored._hidden_params == {"additional_headers": {"x-hidden": "1"}}
