"""The official OpenAI Python SDK against the backend's /v1/chat/completions.

Run by tests/tests/llm.rs with XENIOS_BASE_URL (.../v1) and XENIOS_API_KEY set. The backend
authenticates with X-API-Key, so the SDK sends it as a default header.
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ["XENIOS_BASE_URL"],
    api_key="unused",
    default_headers={"X-API-Key": os.environ["XENIOS_API_KEY"]},
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
