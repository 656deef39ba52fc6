"""The query's words found inside the text read: case-blind, inside longer words and codes."""

from __future__ import annotations

from imgsearch.media.searchable_text import compose, image_words, parts, with_image_text, with_tags
from imgsearch.ocr.matching import holds_a_word, inside_score, inside_tokens


def test_tokens_are_lower_case_longest_first_and_skip_what_would_match_anything():
    assert inside_tokens("Gate B17 to a 0x80070005 of") == ["0x80070005", "gate", "b17"]
    assert inside_tokens("RE16") == ["re16"] and inside_tokens("a ab") == [] and inside_tokens("咖啡") == ["咖啡"]
    assert inside_tokens("B7") == ["b7"]


def test_a_token_inside_a_longer_word_or_code_counts_in_any_case():
    assert inside_score(["b17"], "DEPARTURES\nGATEB17") == 1.0
    assert inside_score(["re16"], "re16tgk") == 1.0
    assert inside_score(["summer", "jazz"], "SUMMER FESTIVAL") == 6 / 10
    assert inside_score(["zebra"], "SUMMER JAZZ") == 0.0 and inside_score([], "x") == 0.0


def test_the_text_read_is_a_part_of_the_searchable_text_that_tags_and_reading_keep():
    text = compose("IMG_1 IMG 1", "a description", "", ["dog"], image_text="GATE B17\nDEPARTURES")
    assert image_words(text) == "gate b17 departures" and parts(text) == ("img_1 img 1", "a description", "", "dog")
    retagged = with_tags(text, ["beach", "sea"])
    assert image_words(retagged) == "gate b17 departures" and parts(retagged)[3] == "beach sea"
    reread = with_image_text(retagged, "EXIT 4")
    assert image_words(reread) == "exit 4" and parts(reread) == parts(retagged)
    assert image_words(compose("name")) == "" and image_words(with_image_text(compose("name"), "")) == ""


def test_stop_words_alone_find_nothing_and_a_picture_must_hold_half_the_query():
    assert inside_tokens("the dog and the park") == ["park", "dog"]
    assert inside_score(["park", "dog"], "PARKING") == 4 / 7 and inside_score(["parking", "dog"], "DOG") == 0.0
    assert holds_a_word("img_2041 img 2041 jpg\x1fthe end", "IMG_2041") is True
    assert holds_a_word("the end", "a dog in the park") is False  # found by "the" alone: not a match
    assert holds_a_word("the end", "the") is True  # a query of stop words only
    assert holds_a_word("星巴克咖啡店", "咖啡店") is True  # CJK runs have no spaces
