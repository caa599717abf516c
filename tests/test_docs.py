"""The documentation cannot drift from the code: the configuration page is generated from
`Settings`, the CLI reference is checked against the parser, the table of handled event
types against the handler registry, and every relative link and anchor must resolve."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from webhook_worker import config_reference
from webhook_worker.cli import build_parser
from webhook_worker.ops.deploy import build_parser as build_deploy_parser
from webhook_worker.worker.handlers import HANDLERS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _section(text: str, heading: str) -> str:
    """The body under a heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start : stop.start() if stop else len(text)]


# --- README ----------------------------------------------------------------------------------


def test_the_readme_is_read_in_five_minutes() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 220
    assert "make run" in text and "make test" in text


# --- configuration ---------------------------------------------------------------------------


def test_every_variable_settings_reads_has_a_reference_line() -> None:
    missing = config_reference.undocumented()
    assert not missing, (
        f"Settings.from_env reads {', '.join(missing)} but webhook_worker/config_reference.py "
        "has no line for it: add a Variable (meaning, used by; `advanced=` with a reason, or "
        f"`replacement=` if deprecated), then run: {config_reference.REGENERATE}"
    )


def test_the_configuration_page_is_generated_from_settings() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert page == config_reference.render_markdown(), (
        f"docs/configuration.md differs from Settings; regenerate it: {config_reference.REGENERATE}"
    )


def test_the_main_table_has_at_most_thirty_variables() -> None:
    documented = config_reference.documented()
    main = [v for v in documented if not v.advanced and not v.replacement]
    assert len(main) <= config_reference.MAIN_TABLE_MAX, (
        "move the least-changed main variables to the Advanced table (advanced=reason)"
    )
    for var in documented:
        assert var.meaning and var.used_by, var.name


def test_every_documented_variable_shows_its_real_value() -> None:
    from webhook_worker.config import Settings

    defaults = Settings.from_env({})
    for var in config_reference.documented():
        assert var.value is not None or hasattr(defaults, var.field), (
            f"{var.name}: Settings has no field {var.field!r}; give its Variable `attribute=`"
        )


def test_the_reference_generator_catches_a_new_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lead sees after merging a branch that adds a variable without its line."""
    read = config_reference.names_read() | {"BRAND_NEW_SETTING"}
    assert config_reference.undocumented(read) == ["BRAND_NEW_SETTING"]


# --- CLI reference ---------------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[str, argparse.ArgumentParser]:
    """Every leaf command, by its full name."""
    found: dict[str, argparse.ArgumentParser] = {}
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers and path:
        found[" ".join(path)] = parser
    for action in subparsers:
        for name, sub in action.choices.items():
            found |= _commands(sub, (*path, name))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
        if option.startswith("--")
    }


def _cli_commands() -> dict[str, argparse.ArgumentParser]:
    commands = {f"webhook-worker {name}": p for name, p in _commands(build_parser()).items()}
    commands["deploy_hotfix.py"] = build_deploy_parser()
    return commands


def test_the_cli_reference_matches_the_parser() -> None:
    text = (DOCS / "operations.md").read_text()
    reference = _section(text, "## CLI reference")
    documented = set(re.findall(r"^### `([^`]+)`$", reference, re.M))
    commands = _cli_commands()
    problems = [
        f"{name}: no `### \\`{name}\\`` section in docs/operations.md#cli-reference"
        for name in sorted(set(commands) - documented)
    ]
    problems += [
        f"{name}: documented in docs/operations.md but not a command"
        for name in sorted(documented - set(commands))
    ]
    for name in sorted(documented & set(commands)):
        body = _section(reference, f"### `{name}`")
        mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", body))
        options = _options(commands[name])
        problems += [f"{name}: {o} is not in the docs" for o in sorted(options - mentioned)]
        problems += [f"{name}: {o} is not an option" for o in sorted(mentioned - options)]
    assert not problems, "\n".join(problems)


# --- Stripe ----------------------------------------------------------------------------------


def test_the_table_of_handled_types_is_the_handler_registry() -> None:
    text = (DOCS / "stripe.md").read_text()
    table = _section(text, "## Event types handled")
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            documented |= set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", first_cell))
    assert documented == set(HANDLERS), (
        f"docs/stripe.md 'Event types handled' lacks {sorted(set(HANDLERS) - documented)} "
        f"and names {sorted(documented - set(HANDLERS))} that no handler takes"
    )


# --- links -----------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_link_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A section: with `code`\n\n[ok](#a-section-with-code) [x](#nope)\n"
    )
    assert _anchors(page) == {"title", "a-section-with-code"}
    assert _links(page) == ["#a-section-with-code", "#nope"]


def test_every_ignore_reason_a_handler_writes_is_explained() -> None:
    """`ignored("reason")` in a handler stores that reason in `status_reason`: each one has
    its row in stripe.md's "What each reason means" table."""
    handlers = ROOT / "webhook_worker" / "worker" / "handlers"
    written = {
        reason
        for path in handlers.glob("*.py")
        for reason in re.findall(r'\bignored\(\s*"([a-z_]+)"', path.read_text())
    }
    assert {"not_a_credit_purchase", "unhandled_type", "no_invoice"} <= written
    page = (ROOT / "docs" / "stripe.md").read_text()
    table = page.split("## What each reason means", 1)[1].split("\n## ", 1)[0]
    explained = set(re.findall(r"^\| `([a-z_]+)`", table, re.M)) | set(
        re.findall(r"/ `([a-z_]+)`", table)
    )
    assert written - explained == set()
