"""The gateway as users see it: the official `openai` client and raw HTTP against a running
cluster (control plane + 1 prefill + 1 decode worker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import openai
import pytest

from control_plane.launcher import Cluster
from engine.model.ling import LingModel
from engine.tokenizer import Tokenizer
from tests.integration.cluster import assert_pools_empty, load_of, running_cluster
from tests.integration.near_ties import tie_free_prompts

KEY = "sk-test-duet"


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path) -> Iterator[Cluster]:
    with running_cluster(tiny_model_dir, 1, 1, control_plane_args=("--api-key", KEY)) as c:
        yield c
        for w in c.workers:
            assert_pools_empty(w.address, w.role)


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{cluster.http_port}/v1", api_key=KEY, max_retries=0, timeout=120
    )


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["ling-tiny"]


def test_chat_non_streaming_and_streaming_agree(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there!"},
    ]
    whole = client.chat.completions.create(
        model="ling-tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 10
    stream = client.chat.completions.create(
        model="ling-tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completions_with_token_ids_logprobs_and_seed(
    client: openai.OpenAI, tiny_model: LingModel
) -> None:
    prompt, want = tie_free_prompts(tiny_model, [9], 5, seed=8)[0]
    out = client.completions.create(
        model="ling-tiny",
        prompt=prompt,
        max_tokens=5,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    lp = out.choices[0].logprobs
    assert [int(t.split(":")[1]) for t in lp.tokens] == want
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) >= 2 for t in lp.top_logprobs)
    seeded = [
        client.completions.create(
            model="ling-tiny",
            prompt="Once upon a time",
            max_tokens=8,
            temperature=1.0,
            seed=7,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_stop_string_cuts_the_text(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    free = (
        client.completions.create(
            model="ling-tiny",
            prompt="The cache",
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    if not stop.strip():
        pytest.skip("the greedy text has no usable stop string here")
    cut = client.completions.create(
        model="ling-tiny",
        prompt="The cache",
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == free[: free.index(stop)]


def test_forced_tool_choice_is_accepted(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    out = client.chat.completions.create(
        model="ling-tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=8,
        temperature=0,
    )
    choice = out.choices[0]
    # A random-weight model does not close the JSON; the forced prefix then comes back as text.
    if choice.message.tool_calls:
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert choice.finish_reason == "tool_calls"
    else:
        assert (choice.message.content or "").startswith(
            '<tool_call>\n{"name": "get_weather", "arguments": '
        )


def test_missing_key_is_401(cluster: Cluster) -> None:
    bad = openai.OpenAI(
        base_url=f"http://127.0.0.1:{cluster.http_port}/v1", api_key="wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def _chat(**extra: object) -> bytes:
    body = {"model": "ling-tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(body).encode()


BAD_INPUTS = [
    (b"{not json", 400, "JSON"),
    (b'{"model": "ling-tiny", "messages": "hi"}', 400, "messages"),
    (_chat(model="nope"), 404, "nope"),
    (_chat(messages=[]), 400, "messages"),
    (_chat(max_tokens=-3), 400, "max_tokens"),
    (_chat(max_tokens=100_000_000), 400, "max_tokens"),
    (_chat(n=2), 400, "n"),
    (
        b'{"model": "ling-tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "UTF-8",
    ),
    (_chat(temperature="hot"), 400, "temperature"),
]


def test_bad_inputs_get_4xx_and_the_server_keeps_serving(
    cluster: Cluster, tiny_model_dir: Path
) -> None:
    url = f"http://127.0.0.1:{cluster.http_port}/v1/chat/completions"
    long_prompt = "word " * 5000

    async def main() -> list[tuple[int, dict]]:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        bodies = [b for b, _, _ in BAD_INPUTS] + [
            json.dumps(
                {"model": "ling-tiny", "messages": [{"role": "user", "content": long_prompt}]}
            ).encode()
        ]
        async with aiohttp.ClientSession(headers=headers) as s:
            out = []
            for body in bodies:
                async with s.post(url, data=body, timeout=aiohttp.ClientTimeout(total=30)) as r:
                    out.append((r.status, await r.json()))
            return out

    results = asyncio.run(main())
    for (status, body), (_, want_status, needle) in zip(
        results, [*BAD_INPUTS, (b"", 400, "context")], strict=True
    ):
        assert status == want_status, body
        assert needle.lower() in json.dumps(body).lower(), body
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert len(Tokenizer.from_dir(tiny_model_dir).encode(long_prompt)) > 4096


def test_two_hundred_concurrent_streams(cluster: Cluster, tiny_model: LingModel) -> None:
    cases = tie_free_prompts(tiny_model, [3, 8, 15, 21, 30], 6, seed=13)
    url = f"http://127.0.0.1:{cluster.http_port}/v1/completions"

    async def one(session: aiohttp.ClientSession, prompt: list[int]) -> list[int]:
        body = {
            "model": "ling-tiny",
            "prompt": prompt,
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
            "logprobs": 0,
            "ignore_eos": True,
            "return_tokens_as_token_ids": True,
        }
        tokens: list[int] = []
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=300)) as r:
            assert r.status == 200
            lines = [line.decode().strip() async for line in r.content if line.strip()]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            chunk = json.loads(line.removeprefix("data: "))
            for choice in chunk["choices"]:
                tokens += [
                    int(t.split(":")[1]) for t in (choice.get("logprobs") or {}).get("tokens", [])
                ]
        return tokens

    async def main() -> list[list[int]]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
            return await asyncio.gather(*(one(s, cases[i % 5][0]) for i in range(200)))

    results = asyncio.run(main())
    assert results == [cases[i % 5][1] for i in range(200)]


def test_client_disconnect_aborts_on_the_workers(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.http_port}/v1/completions"
    body = {
        "model": "ling-tiny",
        "prompt": "A long story",
        "max_tokens": 2000,
        "stream": True,
        "ignore_eos": True,
    }

    async def main() -> int:
        seen = 0
        headers = {"Authorization": f"Bearer {KEY}"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(headers=headers) as s,
            s.post(url, json=body, timeout=timeout) as r,
        ):
            async for raw in r.content:
                seen += bool(raw.strip())
                if seen == 3:
                    break  # leaving the block closes the connection mid-stream
        return seen

    decode = next(w for w in cluster.workers if w.role == "decode")
    before = load_of(decode.address, "decode").completed_requests
    assert asyncio.run(main()) == 3
    for w in cluster.workers:
        assert_pools_empty(w.address, w.role, timeout_s=10)
    # Aborted, not run to its 2000 tokens: an aborted request never counts as completed.
    assert load_of(decode.address, "decode").completed_requests == before


def test_grpc_generate_statuses_health_and_reflection(cluster: Cluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from duet.v1 import generate_pb2 as gpb
    from duet.v1 import generate_pb2_grpc as gpb_grpc
    from duet.v1 import worker_pb2 as pb

    sampling = pb.SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    good = gpb.GenerateRequest(text="Hello", sampling=sampling)
    auth = (("authorization", f"Bearer {KEY}"),)
    with grpc.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as ch:
        stub = gpb_grpc.GenerateStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(good, timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for bad in (
            gpb.GenerateRequest(sampling=sampling),
            gpb.GenerateRequest(token_ids=gpb.TokenIds(ids=[10**6])),
        ):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(bad, timeout=30, metadata=auth))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        replies = list(stub.Generate(good, timeout=30, metadata=auth))
        assert (
            len(replies) == 3
            and replies[-1].finish_reason == "length"
            and replies[-1].completion_tokens == 3
        )
        check = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="duet.v1.Generate"), timeout=5
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([request]), timeout=5
        )
        names = {s.name for r in listed for s in r.list_services_response.service}
        assert {"duet.v1.Generate", "duet.v1.Registry"} <= names
