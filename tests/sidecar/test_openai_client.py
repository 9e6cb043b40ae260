"""The OpenAI-compatible endpoints as the official `openai` client sees them: every shape it parses, streamed
and not, and the errors it raises for what the server refuses."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
from edgewatch.sidecar.testing import wait_ready


@pytest.fixture(scope="module")
def server(shipped_dir, serve):
    with serve(shipped_dir) as s:
        wait_ready(s.url)
        yield s


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_completions_n_choices_usage_and_the_end_token(client, model):
    r = client.completions.create(model=model, prompt="apple shares", max_tokens=64, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.object == "text_completion"
    assert len({c.text for c in r.choices}) == 1  # greedy: three equal choices
    assert all(c.finish_reason == "stop" and c.text for c in r.choices)  # it ended by itself
    one = client.completions.create(model=model, prompt="apple shares", max_tokens=64, temperature=0)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once, as OpenAI counts it
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens

    seeded = dict(model=model, prompt="tesla", max_tokens=12, temperature=1.0, n=3, seed=7)
    a, b = (client.completions.create(**seeded) for _ in range(2))
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # each choice its own seed


def test_completions_logprobs_and_echo(client, model):
    r = client.completions.create(model=model, prompt="apple shares", max_tokens=6, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    for chosen, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) <= 3
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen token is the most likely
        assert chosen in top
    assert sum(math.exp(v) for v in lp.top_logprobs[0].values()) <= 1 + 1e-6

    echoed = client.completions.create(model=model, prompt="apple shares", max_tokens=6, temperature=0, echo=True,
                                       extra_body={"ignore_eos": True})
    assert echoed.choices[0].text == "apple shares" + r.choices[0].text


def test_completions_stream_with_usage_and_stop(client, model):
    whole = client.completions.create(model=model, prompt="apple shares", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    text = whole.choices[0].text
    chunks = list(client.completions.create(model=model, prompt="apple shares", max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    stop = text.strip().split()[1]  # a word in the middle of the text ends it there
    cut = client.completions.create(model=model, prompt="apple shares", max_tokens=10, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(stop)]


def test_chat_whole_and_streamed(client, model):
    messages = [{"role": "system", "content": "You are a market wire."}, {"role": "user", "content": "apple shares"}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, n=3)
    assert r.object == "chat.completion" and [c.index for c in r.choices] == [0, 1, 2]
    reply = r.choices[0].message
    assert reply.role == "assistant" and reply.content and r.choices[0].finish_reason == "stop"
    # the template: the last user message as plain text, continued
    plain = client.completions.create(model=model, prompt="apple shares", max_tokens=128, temperature=0)
    assert reply.content == plain.choices[0].text

    stream = client.chat.completions.create(model=model, messages=messages, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens * 3 == r.usage.completion_tokens  # one choice of the three
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_logprobs(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "tesla"}], temperature=0,
                                       max_tokens=5, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token and t.logprob <= 0
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "tesla"}],
                                              temperature=0, max_tokens=5, logprobs=True, top_logprobs=2,
                                              stream=True, extra_body={"ignore_eos": True})
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("call", "kwargs", "param"), [
    ("completions", {"best_of": 2}, "best_of"),
    ("completions", {"logit_bias": {"50": 1}}, "logit_bias"),
    ("completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("completions", {"suffix": "!"}, "suffix"),
    ("completions", {"echo": True, "logprobs": 1}, "echo"),
    ("completions", {"n": 17}, "n"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"frequency_penalty": 1.0}, "frequency_penalty"),
    ("chat", {"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
])
def test_unsupported_fields_are_refused_with_their_name(client, model, call, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        if call == "completions":
            client.completions.create(model=model, prompt="x", max_tokens=1, **kwargs)
        else:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=1,
                                           **kwargs)
    assert e.value.param == param and e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error" and param.split(".")[0] in e.value.body["message"]


def test_chat_without_a_user_message_is_refused(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "system", "content": "hi"}])
    assert e.value.param == "messages"


def test_null_fields_mean_their_defaults(server, model):
    body = {"model": model, "messages": [{"role": "user", "content": "tesla"}], "temperature": None, "top_p": None,
            "n": None, "stop": None, "seed": None, "logprobs": None, "tools": None, "max_tokens": 4, "stream": None}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1 and r.json()["usage"]["completion_tokens"] <= 4


def test_choices_per_request_are_bounded(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt=["a", "b", "c", "d"], n=5, max_tokens=1)
    assert e.value.param == "n" and "16" in e.value.body["message"]
