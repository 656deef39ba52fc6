"""`make mutants`: hooks that keep mutation testing fast (see docs/mutation-testing.md). A pytest plugin, loaded by
tests/conftest.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

if os.environ.get("MUTANT_UNDER_TEST"):
    # mutmut runs the tests on its copy of the sources in mutants/, with no installed package mapping the top-level
    # folders to imgsearch.indexer, imgsearch.search_api ... (setuptools' package-dir): map them here, by hand.
    import imgsearch

    imgsearch.__path__.append(str(Path(imgsearch.__file__).resolve().parent.parent))


def pytest_collection_modifyitems(config, items):
    """Mark the tests that run imgsearch in another process: `make mutants` leaves them out, since the code a
    child process runs is never the mutated copy."""
    for item in items:
        if "imgsearch_bin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.own_process)
    _only_the_layers_own_tests(config, items)


# `make mutants`: a mutant runs against the test files of its own layer, the most direct first. mutmut would
# otherwise run every test that reached the function, and the API tests reach the indexer and the store
# through their fixtures: 70 tests per surviving mutant instead of about 15. The vector copy meets the API
# tests only in their [vector-copy] half.
_TESTS_OF_LAYER = {  # the first prefix that matches; mutmut names a mutant by its file's path
    "imgsearch.store.vector_copy.": ("test_vector_copy.py", "test_api.py::vector-copy"),
    "imgsearch.store.fields.": (
        "test_filters.py",
        "test_store.py",
        "test_indexer.py",
        "test_vector_copy.py",
        "test_upgrade.py",
    ),
    "imgsearch.store.filters.": ("test_filters.py", "test_vector_copy.py", "test_api.py"),
    "indexer.upgrade.": ("test_upgrade.py",),
    "imgsearch.store.": (
        "test_store.py",
        "test_upgrade.py",
        "test_indexer.py",
        "test_vector_copy.py",
        "test_security.py",
    ),
    "indexer.": ("test_plan.py", "test_indexer.py", "test_security.py"),
    "imgsearch.search.ranking.": ("test_ranking.py", "test_api.py"),
    "search_api.http_errors.": ("test_errors.py", "test_security.py", "test_api.py"),
    "imgsearch.search.service.": ("test_api.py", "test_security.py"),
}


def _mutant_under_test() -> str:
    """The mutant `make mutants` runs the tests against, else "". Read each time: mutmut sets it in each fork."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    return mutant if "__mutmut_" in mutant else ""


def pytest_configure(config):
    """Under `make mutants` a failing property test stops at its first counterexample: shrinking it to the
    smallest one (minutes on Milvus Lite) only tells a person more, and no person reads it."""
    if _mutant_under_test() or os.environ.get("MUTANT_UNDER_TEST") == "stats":
        from hypothesis import Phase, settings

        settings.register_profile(
            "mutants", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None, derandomize=True
        )
        settings.load_profile("mutants")


MUTANT_TEST_LIMIT_S = 8  # every test of the mutation selection takes under 2 s on the real code


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under `make mutants` a test still running after MUTANT_TEST_LIMIT_S fails: the mutant broke something the
    test waits for (a copy that never gets fresh, an endpoint that never answers), and the test's own 30 s
    patience for a slow CI machine would otherwise be paid by every such mutant."""
    if not _mutant_under_test():
        return (yield)

    def too_slow(signum, frame):
        raise TimeoutError(f"over {MUTANT_TEST_LIMIT_S} s under a mutant")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, MUTANT_TEST_LIMIT_S)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _only_the_layers_own_tests(config, items):
    mutant = _mutant_under_test()
    if not mutant:
        return
    files = next((files for prefix, files in _TESTS_OF_LAYER.items() if mutant.startswith(prefix)), None)
    if files is None:
        return

    def rank(item):  # "file::word": only the tests of that file whose id has the word
        for i, wanted in enumerate(files):
            name, _, word = wanted.partition("::")
            if item.path.name == name and word in item.nodeid:
                return i
        return len(files)

    items.sort(key=rank)  # stable: a file's tests keep their order
    dropped = [item for item in items if rank(item) == len(files)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        del items[len(items) - len(dropped) :]
