"""A man page (roff, man(7) macros) rendered from an ``argparse`` parser and its subcommands.

The parser is the one source: usage, descriptions, options, and the sections of the epilog
(a line ``examples:`` or ``exit status:`` at column 0 starts one) become the page's sections.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

_SECTION = re.compile(r"^([a-z][a-z ]*):$")


def _escape(text: str) -> str:
    """Text as roff prints it: backslashes and hyphens literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _bold(text: str) -> str:
    return f"\\fB{_escape(text)}\\fR"


def _invocation(action: argparse.Action) -> str:
    """``-o OPTIONS``, ``--read-only, --no-read-only``, ``NAME|MOUNTPOINT``: bold names,
    italic arguments."""
    if not action.option_strings:
        return _bold(str(action.metavar or action.dest))
    names = ", ".join(_bold(option) for option in action.option_strings)
    if action.nargs == 0:
        return names
    if action.metavar is not None:
        argument = str(action.metavar)
    elif action.choices is not None:
        argument = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        argument = action.dest.upper()
    return f"{names} \\fI{_escape(argument)}\\fR"


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        yield ".TP"
        yield _invocation(action)
        yield _escape(action.help or "")


def _epilog_sections(epilog: str | None) -> Iterator[tuple[str, str]]:
    """(title, body) for each ``title:`` block of an epilog."""
    title, body = "", list[str]()
    for line in (epilog or "").splitlines():
        match = _SECTION.match(line)
        if match:
            if title:
                yield title, "\n".join(body).strip("\n")
            title, body = match.group(1), []
        else:
            body.append(line)
    if title:
        yield title, "\n".join(body).strip("\n")


def _preformatted(text: str) -> Iterator[str]:
    yield ".nf"
    yield ".RS 2"
    yield _escape(text)
    yield ".RE"
    yield ".fi"


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def render(parser: argparse.ArgumentParser, version: str) -> str:
    """The page for ``parser`` (section 1), with a SUBCOMMANDS section for its commands."""
    name = parser.prog
    lines = [
        f'.TH {name.upper()} 1 "" "{name} {version}" "User Commands"',
        ".nh",  # no hyphenation: an option name never breaks across lines
        ".ad l",
        ".SH NAME",
        f"{name} \\- {_escape(parser.description or '')}",
        ".SH SYNOPSIS",
        _escape(_usage(parser)),
        ".SH OPTIONS",
        *_options(parser),
    ]
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if commands:
        lines.append(".SH COMMANDS")
        helps = {choice.dest: choice.help for choice in commands[0]._choices_actions}
        for command, subparser in commands[0].choices.items():
            lines += [f".SS {_escape(f'{name} {command}')}", _escape(helps.get(command) or "")]
            lines += [".PP", _bold(_usage(subparser))]
            if subparser.description:
                lines += [".PP", _escape(subparser.description)]
            lines += list(_options(subparser))
            for title, body in _epilog_sections(subparser.epilog):
                if title == "examples":
                    lines += [".PP", "Examples:", *_preformatted(body)]
    for title, body in _epilog_sections(parser.epilog):
        lines += [f".SH {title.upper()}", *_preformatted(body)]
    return "\n".join(lines) + "\n"
