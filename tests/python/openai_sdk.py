"""The official OpenAI Python SDK against the backend's /v1/chat/completions.

Run by tests/tests/llm.rs with XENIOS_BASE_URL (.../v1) and XENIOS_API_KEY set. The backend
accepts its API key as the SDK's own `api_key` (sent as `Authorization: Bearer`).
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ["XENIOS_BASE_URL"],
    api_key=os.environ["XENIOS_API_KEY"],
    max_retries=0,
    timeout=30,
)

messages = [{"role": "user", "content": "How did the session go?"}]

r = client.chat.completions.create(model="chat", messages=messages)
assert r.choices[0].message.role == "assistant", r
assert r.usage.total_tokens == 10, r.usage
print("complete:", r.choices[0].message.content)

parts = []
for chunk in client.chat.completions.create(
    model="anthropic/claude-sonnet-4", messages=messages, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print("stream:", "|".join(parts))
