"""The man page and the bash and zsh completions generated from casfs's argument parser
(build_backend/generate.py, which every wheel build runs): man renders every command and
option, bash completes commands and options, zsh reads its file."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from casfs.cli import build_parser
from tests.servers import REPO
from tests.test_install import complete_bash, run


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    run(sys.executable, REPO / "build_backend" / "generate.py", out)
    return out / "share"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def test_man_renders_every_command_and_option(generated: Path) -> None:
    page = run("man", "-l", generated / "man" / "man1" / "casfs.1", env={"MANWIDTH": "200"})
    text = page.stdout.replace("\u2010", "-")  # man may hyphenate with U+2010
    assert page.stderr == ""  # no roff warnings
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXAMPLES", "EXIT STATUS"):
        assert f"\n{section}\n" in text, section
    for name, command in _commands().items():
        assert f"casfs {name}" in text
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
    assert "/root/" not in text and "~/.local/share/casfs/store" in text  # not the builder's


def test_bash_completes_commands_and_options(generated: Path) -> None:
    script = generated / "bash-completion" / "completions" / "casfs"
    assert complete_bash(script, "casfs st") == ["stat", "status"]
    assert complete_bash(script, "casfs mount --read") == ["--read-only", "--readahead"]
    assert "--evict" in complete_bash(script, "casfs serve --")


@pytest.mark.skipif(not shutil.which("zsh"), reason="no zsh (make installs it)")
def test_zsh_reads_its_completion(generated: Path) -> None:
    function = generated / "zsh" / "site-functions" / "_casfs"
    assert function.read_text().startswith("#compdef casfs")
    result = subprocess.run(["zsh", "-n", function], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
