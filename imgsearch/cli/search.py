"""``imgsearch search``: by words, example images or both, with filters; ``imgsearch duplicates``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgsearch.cli.common import EXIT_OK, Command, UsageError, settings, shown, with_indexed_model
from imgsearch.cli.options import (
    add_common,
    add_filter_flags,
    add_model_options,
    filter_flag_names,
    given_filters,
    request_choices,
)

if TYPE_CHECKING:
    from imgsearch.search.requests import SearchHit, SearchRequest, SearchResponse
    from imgsearch.settings import Settings
    from imgsearch.store import MilvusStore


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    from imgsearch.search.requests import SORT_POOL, SearchRequest

    def default(field: str) -> Any:
        return SearchRequest.model_fields[field].default

    parser.add_argument(
        "query",
        nargs="*",
        metavar="TERM",
        help=(
            "what to look for: words, image files, or both joined by + and - as separate arguments, each with an "
            "optional weight: '2:golden retriever' + ./pool.jpg - fruit. Text in double quotes inside the "
            "argument ('\"IMG_2041\"') matches file and folder names only"
        ),
    )
    parser.add_argument("--image", type=Path, help="an example image file (the same as giving its path as a term)")
    parser.add_argument(
        "--cutoff",
        choices=request_choices("cutoff"),
        default=default("cutoff"),
        help="auto: stop where this query's relevant results end",
    )
    parser.add_argument(
        "--collapse",
        nargs="?",
        type=float,
        const=default("collapse_threshold"),
        metavar="T",
        help=f"fold near-identical results (cosine >= T, default {default('collapse_threshold'):g}) into one",
    )
    parser.add_argument(
        "--diversity",
        type=float,
        default=default("diversity"),
        metavar="D",
        help="0..1: re-rank for variety (maximal marginal relevance)",
    )
    parser.add_argument(
        "--hybrid",
        "--words",
        dest="hybrid",
        nargs="?",
        type=float,
        const=default("lexical_weight"),
        default=default("lexical_weight"),
        metavar="W",
        help=f"weight 0..1 of the words an image holds: text read in it, names, tags (default {default('lexical_weight'):g}; 0: off)",
    )
    parser.add_argument("--explain", action="store_true", help="show what each term adds to each score")
    parser.add_argument("-k", "--limit", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_filter_flags(parser)
    parser.add_argument(
        "--newest", action="store_true", help=f"newest photo first, among the {SORT_POOL:,} best matches"
    )
    add_common(parser)
    add_model_options(parser)


def search_request(args: argparse.Namespace) -> tuple[SearchRequest, list[str]]:
    """The request a parsed ``imgsearch search`` makes, and the image files it names, in the order its terms'
    ``upload_ref`` numbers them. Raises UsageError for a query it cannot make and pydantic's ValidationError for a
    value the request refuses (a bad date ...): both before any model loads."""
    from imgsearch.search.query_expression import QueryExpressionError, parse_expression
    from imgsearch.search.requests import MAX_LIMIT, SearchRequest
    from imgsearch.store.fields import SearchFilter

    try:
        terms = parse_expression(list(args.query))
    except QueryExpressionError as exc:
        raise UsageError(str(exc)) from None
    images = [term.value for term in terms if term.kind == "image"] + ([str(args.image)] if args.image else [])
    if not terms and not args.image:
        raise UsageError("give a query (text, image files, joined by + and -) or --image PATH")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise UsageError(f"-k must be between 1 and {MAX_LIMIT}")
    request_terms = [
        {"text": term.value, "weight": term.weight}
        if term.kind == "text"
        else {"upload_ref": str(images.index(term.value)), "weight": term.weight}
        for term in terms
    ]
    request = SearchRequest.model_validate(
        {
            "terms": request_terms,
            "limit": args.limit,
            "sort": "newest" if args.newest else "relevance",
            "filter": SearchFilter(**given_filters(args)),
            "cutoff": args.cutoff,
            "collapse": args.collapse is not None,
            "collapse_threshold": args.collapse or SearchRequest.model_fields["collapse_threshold"].default,
            "diversity": args.diversity,
            "lexical_weight": args.hybrid,
            "explain": args.explain,
        },
        context={"has_upload": bool(images)},
    )
    return request, images


def _answer(args: argparse.Namespace, request: SearchRequest, images: list[str]) -> SearchResponse:
    """The answer of a running API that serves this index (the model is loaded there: a fraction of a second), else
    load the collection's model here and run the request."""
    config = settings(args)
    how_to_run = ("model", "device", "precision", "backend")  # asked of this process: run it here
    store = None
    if not images and not any(getattr(args, name, None) for name in how_to_run):
        answer = _answer_from_api(config, request)  # before importing pymilvus (0.45 s)
        if answer is None and (config.precision, config.backend) == ("auto", "auto") and config.device in CPU:
            store = _store(config)
            answer = _answer_with_text_tower(args, config, request, store)
        if answer is not None:
            return answer
    return _answer_here(args, config, request, images, store or _store(config))


def _store(config: Settings) -> MilvusStore:
    from imgsearch.store import MilvusStore

    return MilvusStore.from_settings(config)


CPU = ("auto", "cpu")  # where the text tower was measured: the CPU (auto picks it where no GPU is)


API_PROBE_S = 0.3  # how long a running API gets to say it is there


def _answer_from_api(config: Settings, request: SearchRequest) -> SearchResponse | None:
    """POST /search to the API at IMGSEARCH_API_URL if it is this user's, on this machine, answers at once and
    searches the same index; else None (and nothing, the API key included, was sent to anyone else)."""
    from pydantic import ValidationError

    from imgsearch.cli.local_api import NotOurs, call
    from imgsearch.search.requests import SearchResponse

    try:
        status, health = call("GET", f"{config.api_url}/health", config.api_key, API_PROBE_S)
        if status != 200 or not isinstance(health, dict) or health.get("index_id") != config.index_id:
            return None  # another index, or a server that does not say (older, or a key we lack)
        body = request.model_dump(mode="json", exclude_unset=True)
        status, answer = call("POST", f"{config.api_url}/search", config.api_key, 120, json_body=body)
        return SearchResponse.model_validate(answer) if status == 200 else None
    except (NotOurs, ValidationError):
        return None  # the local path gives any error in the CLI's own words


def _answer_with_text_tower(
    args: argparse.Namespace, config: Settings, request: SearchRequest, store: MilvusStore
) -> SearchResponse | None:
    """Run a text query with the collection's exported text tower, at the setting chosen for it on this machine
    (imgsearch/model/text_graphs.py): no torch, no image tower; None where there is none (or settings name
    another way to run the model): the whole model loads instead."""
    import asyncio

    from imgsearch.model.embedder import model_identity
    from imgsearch.model.text_graphs import fast_text_embedder
    from imgsearch.search.batching import TextBatcher
    from imgsearch.search.service import SearchService

    if not store.exists() or (fingerprint := store.recorded_fingerprint()) is None:
        return None
    model = model_identity(with_indexed_model(args, config, store).model)
    encoder = fast_text_embedder(config.cache_dir, model, fingerprint)
    if encoder is None:
        return None
    batcher = TextBatcher(encoder)
    try:
        return asyncio.run(SearchService(encoder, store, batcher).search(request))
    finally:
        batcher.close()


def _answer_here(
    args: argparse.Namespace, config: Settings, request: SearchRequest, images: list[str], store: MilvusStore
) -> SearchResponse:
    """Load the collection's model and run the request in this process, on ``store``."""
    import asyncio

    from imgsearch.media.images import decode_image
    from imgsearch.model.loading import load_embedder
    from imgsearch.search.batching import TextBatcher
    from imgsearch.search.service import SearchService

    config = with_indexed_model(args, config, store)
    encoder = load_embedder(config)  # SearchService checks the collection's model and weights against it
    uploads = [
        (
            path,
            decode_image(
                Path(path).read_bytes(), path, encoder.image_size, config.max_image_pixels, config.max_decoded_bytes
            ),
        )
        for path in images
    ]
    batcher = TextBatcher(encoder)
    try:
        return asyncio.run(SearchService(encoder, store, batcher).search(request, uploads=uploads))
    finally:
        batcher.close()


def _print_hits(args: argparse.Namespace, hits: list[SearchHit]) -> None:
    if not hits and given_filters(args):
        print(f"no results match the filters ({filter_flag_names()})")
    elif not hits and args.cutoff == "auto":
        print("nothing in the collection stands out for this query (cutoff auto); try without --cutoff")
    elif not hits:
        print("no results (is anything indexed? run: imgsearch index PATH)")
    for hit in hits:
        extra = f"  [{', '.join(shown(tag) for tag in hit.tags)}]" if hit.tags else ""
        extra += f"  (+{len(hit.duplicates)} similar)" if hit.duplicates else ""
        extra += "  (word match)" if hit.name_match or hit.text_match else ""
        print(f"{hit.score:6.3f}  {shown(hit.path)}{extra}")
        if hit.image_text:
            print(f"        text: {shown(' / '.join(hit.image_text.splitlines()))[:200]}")
        for folded in hit.folded:
            print(f"        similar: {shown(folded.path)}")
        for part in hit.explanation or []:
            detail = (
                f"cosine {part.cosine:+.3f} x weight {part.weight:+g} -> {part.contribution:+.3f}"
                if part.cosine is not None
                else f"name match rank {part.name_rank}"
                if part.name_rank
                else "no name match"
            )
            print(f"        {shown(part.term)}: {detail}")


def cmd_search(args: argparse.Namespace) -> int:
    request, images = search_request(args)  # a bad date or option is told before the model loads
    response = _answer(args, request, images)
    for note in response.notes:
        print(f"note: {shown(note)}", file=sys.stderr)
    if response.cutoff is not None:
        cut = response.cutoff
        print(
            f"cutoff: {cut.kept} matches ({cut.z:.1f} standard deviations above the collection"
            + (", cut at a gap" if cut.knee else "")
            + ")",
            file=sys.stderr,
        )
    if args.json:  # the results as a list; the cutoff and notes went to stderr above
        print(json.dumps([hit.model_dump(mode="json", exclude_none=True) for hit in response.results], indent=2))
    else:
        _print_hits(args, response.results)
    return EXIT_OK


def _duplicates_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine at which two images count as one")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_common(parser)


def cmd_duplicates(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.search.duplicates import find_duplicates
    from imgsearch.store import MilvusStore

    if not 0.5 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be between 0.5 and 1")
    store = MilvusStore.from_settings(settings(args))
    store.check_schema()
    report = find_duplicates(store, args.threshold)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return EXIT_OK
    for group in report.groups:
        first, *others = group.images
        print(first.path)
        for member in others:
            print(f"  {member.similarity:.4f}  {member.path}  ({member.why})")
    print(
        f"{len(report.groups)} groups of near-identical images among {report.images} (cosine >= {report.threshold})",
        file=sys.stderr,
    )
    return EXIT_OK


COMMANDS = (
    Command("search", "search by text or by an example image", _search_arguments, cmd_search),
    Command(
        "duplicates", "list groups of near-identical images in the collection", _duplicates_arguments, cmd_duplicates
    ),
)
