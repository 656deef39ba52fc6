"""The edge's table from domain errors to HTTP statuses: by class, the most specific first."""

import pytest

from imgsearch_core.errors import CollectionNotFoundError, ModelMismatchError
from search_api.http_errors import status_for
from search_api.services.search import ImageNotFoundError


@pytest.mark.parametrize(("error", "status"), [
    (ImageNotFoundError("abc"), 404),
    (ModelMismatchError("images", "a", 16, "b", 16), 409),
    (ValueError("the query parts cancel each other out"), 422),
    (CollectionNotFoundError("images"), 503),
])
def test_each_domain_error_has_its_status(error, status):
    assert status_for(error) == status


def test_a_subclass_gets_its_parents_status_and_unknown_errors_are_not_guessed():
    class Narrower(ImageNotFoundError):
        pass

    assert status_for(Narrower("x")) == 404
    with pytest.raises(LookupError):
        status_for(RuntimeError("a bug"))
