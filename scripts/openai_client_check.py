"""The official `openai` Python client against a running paligemma-server.

    target/release/paligemma-server --model demo --model-id demo --port 18090 &
    python scripts/openai_client_check.py http://127.0.0.1:18090/v1

Checks a non-streaming and a streaming chat completion (same answer, the one the
typed /v1/caption endpoint gives), usage counts, the model list, and that errors reach
the client as the openai exception classes. Prints what it saw; exits non-zero on a
mismatch. Needs `pip install openai`.
"""

import base64
import json
import pathlib
import sys
import urllib.request

import openai
from openai import OpenAI


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18090/v1"
    image = pathlib.Path(__file__).resolve().parent.parent / "examples" / "shapes.png"
    b64 = base64.b64encode(image.read_bytes()).decode()
    url = f"data:image/png;base64,{b64}"
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)
    print("openai", openai.__version__)

    models = [m.id for m in client.models.list()]
    print("models:", models)
    model = models[0]

    typed = json.load(
        urllib.request.urlopen(
            urllib.request.Request(
                base + "/caption",
                data=json.dumps({"image": b64}).encode(),
                headers={"content-type": "application/json"},
            )
        )
    )["text"]
    print("typed /v1/caption:", repr(typed))

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "caption en"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    done = client.chat.completions.create(model=model, messages=messages, max_tokens=32)
    text = done.choices[0].message.content
    print("chat:", repr(text), "finish:", done.choices[0].finish_reason, "usage:", done.usage)
    assert text == typed, (text, typed)
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    pieces = []
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    print("stream pieces:", pieces, "usage:", usage)
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens

    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        print("unknown model:", e.status_code, e.body["code"])
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "caption en"}]
        )
        raise AssertionError("a request without an image was accepted")
    except openai.BadRequestError as e:
        print("no image:", e.status_code, e.body["code"])
    print("ok")


if __name__ == "__main__":
    main()
