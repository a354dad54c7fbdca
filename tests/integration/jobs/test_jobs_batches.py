"""The OpenAI Batch API through the real `openai` SDK: files.create, batches.create /
retrieve / list / cancel, files.content; against the real proxy and manager with
fakevllm model servers."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.integration.jobs.jobs_stack import EMBED, IMAGE, TEXT_A, TEXT_B, JobsStack, wait_batch


@pytest.fixture(scope="module")
def sdk(jobs_stack: JobsStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=jobs_stack.proxies["p1"].url + "/v1",
        api_key=jobs_stack.api_key,
        max_retries=0,
        timeout=60,
    )


def jsonl(lines: list[dict]) -> io.BytesIO:
    data = io.BytesIO("".join(json.dumps(x) + "\n" for x in lines).encode())
    data.name = "batch.jsonl"
    return data


def chat_line(custom_id: str, model: str, text: str, **extra) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **extra},
    }


def test_mixed_model_batch_output_in_request_order(sdk: openai.OpenAI) -> None:
    lines = [
        chat_line(f"req-{i:02d}", (TEXT_A, TEXT_B)[i % 3 == 0], f"item {i}") for i in range(12)
    ]
    lines.append(chat_line("bad", TEXT_A, "x", max_tokens=0))  # fakevllm refuses: a 400
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "mixed"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 13
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 1)
    assert done.metadata == {"run": "mixed"}
    out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"req-{i:02d}" for i in range(12)]
    for i, line in enumerate(out):
        model = (TEXT_A, TEXT_B)[i % 3 == 0]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"[{model}] item {i}"
    errors = [json.loads(x) for x in sdk.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    assert errors[0]["response"]["status_code"] == 400
    assert "error" in errors[0]["response"]["body"]
    assert batch.id in [b.id for b in sdk.batches.list(limit=100)]


def test_cancel_a_batch_while_it_runs(sdk: openai.OpenAI) -> None:
    lines = [chat_line(f"c{i}", TEXT_B, "slow") for i in range(8)]  # 0.4 s each, 2 at a time
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(0.7)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    errors = [json.loads(x) for x in sdk.files.content(done.error_file_id).text.splitlines()]
    assert {e["custom_id"] for e in errors} <= {f"c{i}" for i in range(8)}
    assert all(e["error"]["code"] == "batch_cancelled" for e in errors if e["response"] is None)
    assert any(e["response"] is None for e in errors)  # some never ran
    assert done.request_counts.completed + len(errors) == 8


def test_an_embeddings_batch_runs_on_the_embedding_model(sdk: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBED, "input": [f"text {i}", "other"]},
        }
        for i in range(3)
    ]
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(sdk, batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 3)
    out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["e0", "e1", "e2"]
    vectors = [o["response"]["body"]["data"] for o in out]
    assert all([len(d["embedding"]) for d in v] == [8, 8] for v in vectors)
    assert vectors[0][1] == vectors[2][1] and vectors[0][0] != vectors[1][0]


@pytest.mark.parametrize(
    ("lines", "endpoint", "message"),
    [
        ([chat_line("a", "no-such-model", "x")], "/v1/chat/completions", "does not exist"),
        (
            [chat_line("a", TEXT_A, "x"), chat_line("a", TEXT_A, "y")],
            "/v1/chat/completions",
            "twice",
        ),
        ([chat_line("a", TEXT_A, "x")], "/v1/embeddings", "not the batch's endpoint"),
        (
            [
                {
                    "custom_id": "a",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": TEXT_A, "input": "x"},
                }
            ],
            "/v1/embeddings",
            "cannot serve /v1/embeddings",
        ),
        ([chat_line("a", TEXT_A, "x", stream=True)], "/v1/chat/completions", "cannot stream"),
        # The direct routes' own checks (proxy.parsing), not copies of them.
        (
            [chat_line("a", TEXT_A, "x", stream="yes")],
            "/v1/chat/completions",
            "'stream' must be true or false",
        ),
        ([chat_line("a", "m" * 300, "x")], "/v1/chat/completions", "'model' is longer than"),
        ([chat_line("a", "", "x")], "/v1/chat/completions", "'model' is required"),
        # An image line gets the direct route's n/size checks (max_n 2, sizes 64x64, 32x48).
        (
            [
                {
                    "custom_id": "a",
                    "method": "POST",
                    "url": "/v1/images/generations",
                    "body": {"model": IMAGE, "prompt": "x", "n": 9},
                }
            ],
            "/v1/images/generations",
            "max_n=2",
        ),
        (
            [
                {
                    "custom_id": "a",
                    "method": "POST",
                    "url": "/v1/images/generations",
                    "body": {"model": IMAGE, "prompt": "x", "size": "9x9"},
                }
            ],
            "/v1/images/generations",
            "size '9x9'",
        ),
    ],
)
def test_bad_batches_are_refused_naming_the_line(
    sdk: openai.OpenAI, lines: list[dict], endpoint: str, message: str
) -> None:
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        sdk.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
    assert message in err.value.message and "Line" in err.value.message


def test_bad_uploads_are_refused(sdk: openai.OpenAI, jobs_stack: JobsStack) -> None:
    not_json = io.BytesIO(b'{"custom_id": "a"\n')
    not_json.name = "x.jsonl"
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=not_json, purpose="batch")
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=jsonl([chat_line("a", TEXT_A, "x")]), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content("file-nope")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=jobs_stack.proxies["p1"].url + "/v1",
            api_key="wrong-key-0123456789",
            max_retries=0,
        ).batches.list()
