"""Every `stackwise ...` command and `--option` named in README.md and docs/*.md exists in the CLI.

The docs are parsed (fenced shell blocks and inline code spans), and each command line is walked
down the Typer app's click command tree (`typer.main.get_command`), not run: a documented
subcommand that does not exist, or an option its command does not take, fails here with the
file and line. `a | b | c` after a subcommand lists alternatives of the same group
(`stackwise jobs list | show ID | logs ID`); an alternative that is no subcommand of that group is
a shell pipe (`| jq ...`) and is not checked. An inline span that starts with an option
(`--workers N`) must be an option of some stackwise command, unless it belongs to another tool
(FOREIGN_OPTIONS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# `stackwise` as a program: not `stackwise.x`, `stackwise[x]`, `stackwise/`, `localhost/stackwise-base`.
COMMAND = re.compile(r"(?<![\w.\-])(?<!import )stackwise[ \t]+(?=\S)(.*)")
OPTION = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")
# Options of other programs that the docs name in inline code on their own.
FOREIGN_OPTIONS = {
    "--build-arg",  # podman / docker build
    "--no-deps",  # pip install
    "--context",  # python -m stackwise.workloads.<kind> (inside a job, not the CLI)
}


@dataclass(frozen=True)
class Mention:
    file: str
    line: int
    text: str


def _shell_lines(path: Path):
    """(line number, text) of every line in a shell code block, `\\` continuations joined and
    `# comments` dropped."""
    lang = None
    pending, start = "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            lang = None if lang is not None else fence.group(2).lower()
            continue
        if lang is None or lang not in SHELL_LANGS:
            continue
        code = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not pending:
            start = number
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        yield start, pending + code
        pending = ""


def _inline_spans(path: Path):
    """(line number, text) of every inline code span outside code blocks (`\\|` read as `|`)."""
    in_block = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for span in INLINE.findall(line):
            yield number, span.replace("\\|", "|")


def mentions() -> tuple[list[Mention], list[Mention]]:
    """The command mentions (text after `stackwise `) and the inline spans that start with `--`."""
    commands, options = [], []
    for path in DOC_FILES:
        rel = str(path.relative_to(ROOT))
        for number, text in [*_shell_lines(path), *_inline_spans(path)]:
            for match in COMMAND.finditer(text):
                commands.append(Mention(rel, number, match.group(1)))
        for number, span in _inline_spans(path):
            if span.startswith("--"):
                options.append(Mention(rel, number, span))
    return commands, options


def _tokens(text: str) -> list[str]:
    return re.findall(r"'[^']*'|\"[^\"]*\"|\S+", text)


def _opts(command) -> set[str]:
    found = set()
    for param in command.params:
        found.update(getattr(param, "opts", []))
        found.update(getattr(param, "secondary_opts", []))
    return found


def _subcommands(command) -> dict:
    return getattr(command, "commands", None) or {}


def check_command(root, text: str) -> list[str]:
    """What in `text` (the words after `stackwise`) the CLI does not have; [] when all exist."""
    problems = []
    alternatives = [a.strip() for a in re.split(r"(?<!\|)\|(?!\|)", text)]
    parent, prefix = root, []
    for index, alternative in enumerate(alternatives):
        words = _tokens(alternative)
        if index and (not words or words[0] not in _subcommands(parent)):
            break  # a shell pipe (`| jq`), not another subcommand of the group: not ours to check
        group, node, path, allowed = parent, parent if index else root, list(prefix), _opts(root) | {"--help"}
        if index:
            allowed |= _opts(parent)
        rest = words
        while rest and rest[0] in _subcommands(node):
            group, node = node, _subcommands(node)[rest[0]]
            path.append(rest[0])
            allowed |= _opts(node)
            rest = rest[1:]
        if index == 0:
            parent, prefix = group, path[:-1]
        if rest and not rest[0].startswith("-") and _subcommands(node) \
                and not getattr(node, "invoke_without_command", False):  # `stackwise keys` alone names the group
            problems.append(f"`{' '.join(['stackwise', *path, *(rest[:1] or ['?'])])}`: "
                            f"no such subcommand (has: {', '.join(sorted(_subcommands(node)))})")
            continue
        for word in rest:
            for option in OPTION.findall(word):
                if option not in allowed:
                    problems.append(f"`stackwise {' '.join(path)}` has no option {option}")
    return problems


@pytest.fixture(scope="module")
def cli():
    import typer

    from stackwise.cli import app

    return typer.main.get_command(app)


def _every_option(command) -> set[str]:
    found = _opts(command)
    for sub in _subcommands(command).values():
        found |= _every_option(sub)
    return found


def test_the_docs_name_commands_at_all():
    commands, options = mentions()
    files = {m.file for m in commands}
    assert "README.md" in files and len(commands) > 40, files
    assert any(m.text.startswith("jobs list |") for m in commands)


def test_every_documented_command_and_option_exists(cli):
    commands, _ = mentions()
    problems = [f"{m.file}:{m.line}: {p}  [stackwise {m.text}]" for m in commands for p in check_command(cli, m.text)]
    assert not problems, "\n".join(problems)


def test_every_option_named_alone_exists(cli):
    _, options = mentions()
    known = _every_option(cli) | FOREIGN_OPTIONS
    problems = [f"{m.file}:{m.line}: {OPTION.match(m.text).group(1)}  [`{m.text}`]"
                for m in options if OPTION.match(m.text) and OPTION.match(m.text).group(1) not in known]
    assert not problems, "\n".join(problems)


def test_the_checker_finds_what_is_missing(cli):
    assert check_command(cli, "jobs list | show ID | logs ID [-f] | wait ID | cancel ID") == []
    assert check_command(cli, "search q --index kb --json | jq .") == []
    assert check_command(cli, "jobs list | shw ID") == []  # read as a shell pipe: not ours
    assert check_command(cli, "jobs lst") and check_command(cli, "search q --no-such-option")
    assert check_command(cli, "models list | alias NAME 3 candidate --bogus")
