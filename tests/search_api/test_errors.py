"""The edge's table from domain errors to HTTP statuses: by class, the most specific first."""

import pytest

from imgsearch.errors import CollectionNotFoundError, ModelMismatchError
from imgsearch.search.service import ImageNotFoundError
from imgsearch.search_api.http_errors import status_for


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ImageNotFoundError("abc"), 404),
        (ModelMismatchError("images", "a", 16, "b", 16), 409),
        (ValueError("the query parts cancel each other out"), 422),
        (CollectionNotFoundError("images"), 503),
    ],
)
def test_each_domain_error_has_its_status(error, status):
    assert status_for(error) == status


def test_a_subclass_gets_its_parents_status_and_unknown_errors_are_not_guessed():
    class Narrower(ImageNotFoundError):
        pass

    assert status_for(Narrower("x")) == 404
    with pytest.raises(LookupError, match="RuntimeError"):
        status_for(RuntimeError("a bug"))


# ── The edge's messages, on a bare app with only the error handlers and the body limit ────────────────


@pytest.fixture
def edge():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from imgsearch.search.requests import SearchRequest
    from imgsearch.search_api.http_errors import BodySizeLimit, install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/search")
    async def search(request: SearchRequest) -> dict:
        return {"ok": True}

    @app.get("/missing")
    async def missing() -> dict:
        raise ImageNotFoundError("abc")

    app.add_middleware(BodySizeLimit, limit=100, slack=10)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"text": "x", "limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"text": "x", "filter": {"min_width": -1}}, "filter.min_width: Input should be greater than or equal to 0"),
        ({}, "body: Value error, give at least one of 'text', 'image_id' or 'terms'"),
        ({"text": "x", "bogus": 1}, "bogus: Extra inputs are not permitted"),
        (
            {"limit": 0, "bogus": 1},
            "limit: Input should be greater than or equal to 1; bogus: Extra inputs are not permitted",
        ),
    ],
)
def test_a_422_says_which_field_and_why_in_one_line(edge, body, detail):
    response = edge.post("/search", json=body)
    assert response.status_code == 422 and response.json()["detail"] == detail
    assert [error["msg"] for error in response.json()["errors"]] == [
        part.split(": ", 1)[1] for part in detail.split("; ")
    ]


def test_undecodable_bytes_in_a_body_are_reported_not_a_500(edge):
    response = edge.post("/search", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON decode error" in response.json()["detail"]
    # Not declared as JSON, the raw bytes reach validation and are echoed back, undecodable ones replaced.
    response = edge.post("/search", content=b"\xff\xfe", headers={"content-type": "text/plain"})
    assert response.status_code == 422 and response.json()["errors"][0]["input"] == "\ufffd\ufffd"
    assert response.json()["detail"] == "body: Input should be a valid dictionary or object to extract fields from"


def test_an_error_without_a_location_is_put_on_the_body():
    import asyncio
    import json

    from fastapi.exceptions import RequestValidationError

    from imgsearch.search_api.http_errors import validation_error

    response = asyncio.run(validation_error(None, RequestValidationError([{"type": "custom", "msg": "too vague"}])))
    assert response.status_code == 422 and json.loads(response.body)["detail"] == "body: too vague"


def test_a_domain_error_becomes_its_status_with_its_message(edge):
    response = edge.get("/missing")
    assert response.status_code == 404 and response.json() == {"detail": "no indexed image with id 'abc'"}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_the_body_limit_counts_the_slack_and_names_the_setting(edge, declared):
    fits = b'{"text": "' + b"x" * 98 + b'"}'  # 110 bytes: the limit plus the slack
    assert edge.post("/search", content=fits, headers={"content-type": "application/json"}).status_code == 200
    over = fits[:-2] + b'x"}'

    def chunks():
        yield over[:50]
        yield over[50:]

    response = edge.post(
        "/search", content=over if declared else chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "upload is over the limit of 100 bytes (IMGSEARCH_MAX_UPLOAD_BYTES)"
