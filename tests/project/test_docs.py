"""The docs a newcomer reads agree with the code: every setting is documented, README's links lead somewhere."""

from __future__ import annotations

import re

from imgsearch.settings import Settings
from tests.support import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def settings_table_variables(markdown: str) -> list[str]:
    """The first column of the table under '## Settings', as the variables it names."""
    section = markdown.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([A-Z0-9_]+)`", row).group(1) for row in rows]


def test_the_configuration_table_lists_exactly_the_settings():
    documented = settings_table_variables((REPO / "docs" / "configuration.md").read_text())
    expected = [f"IMGSEARCH_{name.upper()}" for name in Settings.model_fields]
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented)), "a setting is listed twice"


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, or a heading of the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme  # the tests' command, as .ci/run runs it
    assert "(docs/" in readme  # and it leads into the guides
