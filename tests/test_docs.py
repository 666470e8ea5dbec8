"""Every command in README.md and docs/*.md is run here, run by a named test, or marked illustrative.

The convention (docs/README.md, "How commands in these pages are checked"): the line before each
fenced ``bash`` or ``python`` block is one of

    <!-- run -->                                    this file executes the bash block (fast commands only)
    <!-- tested-by: tests/test_x.py::test_a, ... --> the named tests run these commands on small data
    <!-- illustrative -->                           not executed (full datasets, GPUs, long runs)

Other fences are ``text``/``json``/... and are not commands; a fence without a language is refused,
so a command block cannot dodge the rule. Every ``densekit ...`` (or ``-m densekit.cli ...``) in a
bash block must name a registered command and only options that command declares, checked against
the Typer app itself. Relative links must point at files that exist.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
MARKER = re.compile(r"^<!--\s*(run|illustrative|tested-by:\s*(?P<tests>[^>]*?))\s*-->$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
COMMAND_LANGS = {"bash", "python"}
NOT_COMMANDS = {"text", "json", "toml", "yaml", "diff"}
# Pages written after this file; a link to them may point nowhere until then (none left).
PENDING_PAGES: set[Path] = set()
README_LIMIT = 10_000  # bytes: details belong in docs/


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str | None  # "run", "illustrative", "tested-by" or None
    tests: tuple[str, ...]
    body: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def parse_blocks(page: Path, text: str | None = None) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown page (or of `text` labelled as that page), each with the
    marker found on the nearest non-blank line above it; plus parse problems."""
    lines = (page.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{page.relative_to(REPO)}:{i + 1}: unclosed code fence")
            break
        above = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        kind = None if marker is None else marker.group(1).split(":")[0].strip()
        tests = tuple(t.strip() for t in (marker.group("tests") or "").split(",") if t.strip()) if marker else ()
        blocks.append(Block(page, start + 1, lang, kind, tests, "\n".join(lines[start + 1 : end])))
        i = end + 1
    return blocks, problems


@cache
def all_blocks() -> tuple[Block, ...]:
    found: list[Block] = []
    for page in PAGES:
        found += parse_blocks(page)[0]
    return tuple(found)


def bash_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang == "bash"]


# ---------------------------------------------------------------- the CLI's registered commands


@cache
def cli_root():
    """The click command behind `densekit`, whether densekit.cli is a module or a package."""
    import typer

    import densekit.cli as cli

    app = cli.app
    if isinstance(app, types.ModuleType):  # densekit/cli/app.py shadowing the package attribute
        app = app.app
    return typer.main.get_command(app)


def option_names(command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


def command_lines(body: str) -> list[list[str]]:
    """Each shell command of a bash block as tokens (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in tokens:
            if token in {"&&", "||", ";", "|"}:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def densekit_invocations(body: str) -> list[list[str]]:
    """The arguments after `densekit` (or `-m densekit.cli`) in every command of a bash block."""
    found = []
    for tokens in command_lines(body):
        for i, token in enumerate(tokens):
            if token == "densekit" or token.endswith("/densekit"):
                found.append(tokens[i + 1 :])
                break
            if token == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "densekit.cli":
                found.append(tokens[i + 2 :])
                break
    return found


def check_invocation(args: list[str]) -> tuple[list[str], str | None]:
    """(the command path, or an error) for `densekit ARGS` against the registered commands."""
    command, path = cli_root(), []
    rest = list(args)
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        name = rest.pop(0)
        if name not in command.commands:
            known = ", ".join(sorted(command.commands))
            return path, f"`densekit {' '.join([*path, name])}`: no such command (known: {known})"
        command, path = command.commands[name], [*path, name]
    if hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        return path, f"`densekit {' '.join(path)}` needs a subcommand"
    allowed = option_names(command)
    for token in rest:
        token = token.strip("[]")
        if token == "--":
            break
        if not token.startswith("-") or token in {"-", "..."} or re.fullmatch(r"-\d[\d.eE+-]*", token):
            continue
        name = token.split("=", 1)[0]
        if name not in allowed:
            return path, f"`densekit {' '.join(path)}` has no option {name}"
    return path, None


# ---------------------------------------------------------------- tests named by `tested-by`


@cache
def index_test_file(path: str) -> tuple[set[str], set[str]]:
    """(qualified test names, words of every string literal) of a test file, read with ast."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    names: set[str] = set()
    words: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words.update(node.value.split())
    return names, words


def resolve_test(reference: str) -> str | None:
    """None if `tests/x.py::name` names an existing test, else what is wrong."""
    path, sep, name = reference.partition("::")
    if not sep or not path.startswith("tests/") or not path.endswith(".py"):
        return f"{reference!r} is not of the form tests/test_x.py::test_name"
    if not (REPO / path).is_file():
        return f"{path} does not exist"
    if name not in index_test_file(path)[0]:
        return f"{path} has no test {name!r}"
    return None


# ---------------------------------------------------------------- the tests


def test_every_command_block_has_a_marker() -> None:
    problems: list[str] = []
    for page in PAGES:
        blocks, parse_problems = parse_blocks(page)
        problems += parse_problems
        for block in blocks:
            if block.lang == "":
                problems.append(f"{block.where}: fence without a language (use bash, python, text or json)")
            elif block.lang in {"sh", "shell", "console", "py"}:
                problems.append(f"{block.where}: write ```{'python' if block.lang == 'py' else 'bash'}")
            elif block.lang in COMMAND_LANGS and block.marker is None:
                problems.append(
                    f"{block.where}: {block.lang} block without <!-- run -->, "
                    "<!-- tested-by: ... --> or <!-- illustrative --> on the line above"
                )
            elif block.lang not in COMMAND_LANGS | NOT_COMMANDS:
                problems.append(f"{block.where}: unexpected fence language {block.lang!r}")
            if block.marker == "run" and block.lang != "bash":
                problems.append(f"{block.where}: only bash blocks can be <!-- run -->")
            if block.marker == "tested-by" and not block.tests:
                problems.append(f"{block.where}: tested-by names no test")
    assert not problems, "\n".join(problems)


def test_tested_by_names_existing_tests_that_mention_the_commands() -> None:
    problems: list[str] = []
    for block in all_blocks():
        if block.marker != "tested-by":
            continue
        errors = [e for e in map(resolve_test, block.tests) if e]
        problems += [f"{block.where}: {e}" for e in errors]
        if errors or block.lang != "bash":
            continue
        words = set().union(*(index_test_file(t.partition("::")[0])[1] for t in block.tests))
        for args in densekit_invocations(block.body):
            path, error = check_invocation(args)
            if not error and path and path[-1] not in words:
                problems.append(f"{block.where}: none of {', '.join(block.tests)} runs `densekit {' '.join(path)}`")
    assert not problems, "\n".join(problems)


def test_every_densekit_command_and_option_exists() -> None:
    problems: list[str] = []
    count = 0
    for block in bash_blocks():
        for args in densekit_invocations(block.body):
            count += 1
            error = check_invocation(args)[1]
            if error:
                problems.append(f"{block.where}: {error}")
    assert count > 30, f"only {count} densekit commands found in the docs: is the parser broken?"
    assert not problems, "\n".join(problems)


def test_the_checker_catches_wrong_commands_and_options() -> None:
    assert check_invocation(["index", "build", "scifact", "--out", "x", "[--factory", "Flat]"]) == (
        ["index", "build"],
        None,
    )
    assert "no such command" in check_invocation(["index", "frobnicate"])[1]
    assert "no such command" in check_invocation(["frobnicate", "scifact"])[1]
    assert "no option --frobnicate" in check_invocation(["eval", "scifact", "--frobnicate", "1"])[1]
    assert densekit_invocations("A=1 densekit eval x \\\n  --json  # c\ntorchrun -m densekit.cli index info d") == [
        ["eval", "x", "--json"],
        ["index", "info", "d"],
    ]
    text = "<!-- run -->\n```\ndensekit x\n```\n\n```bash\nls\n```\n<!-- tested-by: tests/a.py::b, c -->\n```bash\n```"
    blocks, problems = parse_blocks(REPO / "probe.md", text)
    assert [(b.lang, b.marker, b.tests) for b in blocks] == [
        ("", "run", ()),
        ("bash", None, ()),
        ("bash", "tested-by", ("tests/a.py::b", "c")),
    ]
    assert not problems and resolve_test("c") and resolve_test("tests/test_docs.py::nope")
    assert resolve_test("tests/test_docs.py::test_links_point_at_files_that_exist") is None


def test_links_point_at_files_that_exist() -> None:
    problems: list[str] = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() and path not in PENDING_PAGES:
                problems.append(f"{page.relative_to(REPO)}: link to {target} points nowhere")
    assert not problems, "\n".join(problems)


def test_docs_index_lists_every_page_and_readme_stays_short() -> None:
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    pages = [p.name for p in PAGES if p.parent.name == "docs" and p.name != "README.md"]
    missing = [name for name in pages if f"({name})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"
    size = (REPO / "README.md").stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; move details to a docs/ page"


RUN_BLOCKS = [b for b in bash_blocks() if b.marker == "run"]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_run_blocks_execute(block: Block, beir_root: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DENSEKIT_DATA": str(beir_root),
        "DENSEKIT_QUIET": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.body],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{block.where} printed nothing"
