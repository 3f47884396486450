"""An LLM gateway that sends its rate-limit headers on every response shape.

The LiteLLM bug report (``x-ratelimit-*`` headers dropped on streams and plain dicts),
rebuilt end to end and fixed with header-first-stream:

- `upstream`: a mock OpenAI/Anthropic provider;
- `limiter`: per-key requests/tokens per minute, and the headers they give (in memory);
- `keys`: the virtual keys and where they are kept (in memory);
- `limiter_redis`: both in Redis, shared by worker processes;
- `workers`: the gateway behind ``uvicorn --workers N``;
- `web`: the chat page of ``scripts/demo --serve``, which reads the headers in a browser;
- `app`: the gateway, with LiteLLM's post-call hook and the fix (or, with
  ``fix=False``, LiteLLM's behaviour);
- `demo`: the bug report's probes on real servers; run it with ``scripts/demo``.
"""
