"""The batch and waitpoint endpoints through Django's test client (no workers)."""

from collections.abc import Callable

from batches.models import Batch
from jobs.models import Job
from tests.api.conftest import ApiClient
from tests.batches.conftest import ndjson


def post_items(api: ApiClient, batch_id: str, body: bytes, content_type: str = "application/x-ndjson") -> object:
    return api.client.post(
        f"/api/v1/batches/{batch_id}/items", body, content_type=content_type, headers=api.headers
    )


def create(api: ApiClient, **body: object) -> dict:
    response = api.post("/api/v1/batches", {"task": "examples.echo", "run_count": 3, **body})
    assert response.status_code == 201, response.content
    return response.json()


def test_create_then_stream_then_get(api: ApiClient) -> None:
    batch = create(api, run_count=3)
    assert batch["status"] == "pending" and batch["sealed"] is False and batch["on_child_failure"] == "continue"

    short = post_items(api, batch["id"], ndjson([{"payload": 0}]))
    assert short.status_code == 200
    assert short.json() == {"id": batch["id"], "sealed": False, "enqueued_count": 1, "status": "processing", "missing": 2}

    rest = post_items(api, batch["id"], ndjson([{"payload": i, "index": i} for i in range(3)]))
    assert rest.json() == {"id": batch["id"], "sealed": True, "enqueued_count": 3, "status": "processing"}

    got = api.get(f"/api/v1/batches/{batch['id']}").json()
    assert (got["sealed"], got["enqueued_count"], got["run_count"]) == (True, 3, 3)
    assert set(got) == {
        "id", "task", "status", "sealed", "run_count", "enqueued_count", "completed_count", "succeeded_count",
        "failed_count", "cancelled_count", "on_child_failure", "idempotency_key", "parent", "waitpoint",
        "created_at", "sealed_at", "completed_at",
    }


def test_inline_items_seal_in_one_call_and_idempotency_holds(api: ApiClient) -> None:
    body = {"task": "examples.echo", "run_count": 2, "items": [{"payload": 1}, {"payload": 2}], "idempotency_key": "k1"}
    first = api.post("/api/v1/batches", body)
    again = api.post("/api/v1/batches", body)
    conflict = api.post("/api/v1/batches", {**body, "run_count": 3, "items": None})
    assert first.status_code == 201 and first.json()["sealed"] is True
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"


def test_create_errors(api: ApiClient, settings: object) -> None:
    too_many = api.post("/api/v1/batches", {"task": "examples.echo", "run_count": 100_001})
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "invalid_request"
    unknown = api.post("/api/v1/batches", {"task": "nope.nope", "run_count": 1})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_task"
    bad_item = api.post("/api/v1/batches", {"task": "examples.echo", "run_count": 2, "items": [{"payload": 1}, 5]})
    assert bad_item.status_code == 400
    assert bad_item.json()["error"]["code"] == "invalid_item" and bad_item.json()["error"]["line"] == 2
    assert not Batch.objects.exists()


def test_items_errors_have_their_shape_and_line(api: ApiClient, settings: object) -> None:
    batch = create(api, run_count=3)
    wrong_type = post_items(api, batch["id"], ndjson([{"payload": 1}]), content_type="application/json")
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"

    bad = post_items(api, batch["id"], ndjson([{"payload": 1}]) + b'{"payload": 2, "index": 9}\n')
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_item" and bad.json()["error"]["line"] == 2
    assert Job.objects.filter(batch_id=batch["id"]).count() == 1

    settings.BATCH_ITEM_MAX_BYTES = 50  # type: ignore[attr-defined]
    big = post_items(api, batch["id"], ndjson([{"payload": "x" * 100}]))
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large" and big.json()["error"]["line"] == 1


def test_cancelled_batch_is_closed_and_cancel_is_repeatable(api: ApiClient) -> None:
    batch = create(api, run_count=2)
    post_items(api, batch["id"], ndjson([{"payload": 1}]))

    cancelled = api.post(f"/api/v1/batches/{batch['id']}/cancel")
    again = api.post(f"/api/v1/batches/{batch['id']}/cancel")
    closed = post_items(api, batch["id"], ndjson([{"payload": 2, "index": 1}]))

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_count"] == 1
    assert again.status_code == 200 and again.json() == cancelled.json()
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "batch_closed"


def test_results_are_in_index_order_and_paginated(api: ApiClient) -> None:
    batch = create(api, run_count=5)
    post_items(api, batch["id"], ndjson([{"payload": i, "index": 4 - i} for i in range(5)]))
    Job.objects.filter(batch_id=batch["id"], batch_index=2).update(status="succeeded", result={"ok": 2})

    page = api.get(f"/api/v1/batches/{batch['id']}/results", limit=2).json()
    assert [r["index"] for r in page["results"]] == [0, 1]
    seen = list(page["results"])
    while page["next"]:
        page = api.client.get(page["next"], headers=api.headers).json()
        seen += page["results"]
    assert [r["index"] for r in seen] == [0, 1, 2, 3, 4]
    assert seen[2]["result"] == {"ok": 2} and seen[2]["status"] == "succeeded"
    assert set(seen[0]) == {"index", "job", "status", "result", "error"}


def test_another_tenants_batch_and_waitpoint_are_404(api: ApiClient, other_api: ApiClient) -> None:
    batch = create(api, run_count=1)
    waitpoint = api.post("/api/v1/waitpoints", {}).json()
    for path in (f"/api/v1/batches/{batch['id']}", f"/api/v1/batches/{batch['id']}/results",
                 f"/api/v1/waitpoints/{waitpoint['id']}"):
        response = other_api.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert post_items(other_api, batch["id"], ndjson([{"payload": 1}])).status_code == 404
    assert other_api.post(f"/api/v1/waitpoints/{waitpoint['id']}/complete", {"output": 1}).status_code == 404
    assert other_api.post(f"/api/v1/batches/{batch['id']}/cancel").status_code == 404


def test_token_waitpoint_completes_once(api: ApiClient) -> None:
    created = api.post("/api/v1/waitpoints", {"timeout_seconds": 60, "idempotency_key": "w"})
    assert created.status_code == 201
    waitpoint = created.json()
    assert (waitpoint["type"], waitpoint["status"], waitpoint["timeout_at"] is not None) == ("token", "pending", True)
    assert api.post("/api/v1/waitpoints", {"idempotency_key": "w"}).status_code == 200

    done = api.post(f"/api/v1/waitpoints/{waitpoint['id']}/complete", {"output": {"approved": True}})
    twice = api.post(f"/api/v1/waitpoints/{waitpoint['id']}/complete", {"output": {"approved": False}})

    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert done.json()["output"] == {"approved": True} and done.json()["output_is_error"] is False
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "invalid_state"
    assert api.get(f"/api/v1/waitpoints/{waitpoint['id']}").json()["output"] == {"approved": True}


def test_unauthenticated_is_401(make_client: Callable[..., ApiClient]) -> None:
    response = ApiClient(None).post("/api/v1/batches", {"run_count": 1})
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
