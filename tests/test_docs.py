"""Docs that cannot rot: every `sparseinst ...` command in README.md and docs/*.md parses against
the CLI (the command exists, each option exists for it, the arguments fit), and every relative
link points to a file that exists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from sparseinst_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(sparseinst [^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "<", "&"}


def commands_in(text: str) -> list[tuple[str, bool]]:
    """(command text from `sparseinst` on, complete) for each command in a page: every line of a
    code block that runs `sparseinst` or `python -m sparseinst_cli` (continuation lines joined),
    and inline code spans, which may be fragments (`sparseinst eval --weights W`)."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            match = re.search(r"(?:^|[\s/])(sparseinst|-m sparseinst_cli)(\s.*)?$", line)
            if match:
                found.append(("sparseinst" + (match.group(2) or ""), True))
    for span in INLINE.findall(FENCE.sub("", text)):
        found.append((span.replace("\n", " "), False))
    return found


def problems(command: str, complete: bool = True) -> list[str]:
    """What does not fit the CLI in `command` ("sparseinst train --config demo ..."); empty
    when it parses. Fragments (complete=False) may leave out required arguments."""
    try:
        tokens = shlex.split(command)
    except ValueError as exc:
        return [f"{command!r}: cannot split ({exc})"]
    tokens = tokens[1:]  # "sparseinst"
    for i, tok in enumerate(tokens):
        if tok in SHELL_STOP:
            tokens = tokens[:i]
            break
    if any(t == "..." or "..." in t for t in tokens):  # an elided tail: check what is given
        tokens, complete = [t for t in tokens if "..." not in t], False
    group = typer.main.get_command(app)
    tokens, errors = _consume_options(group, tokens, command, stop_at_positional=True)
    path = "sparseinst"
    while _is_group(group):
        if not tokens:
            return errors
        name, tokens = tokens[0], tokens[1:]
        sub = group.commands.get(name)
        if sub is None:
            return [*errors, f"{command!r}: {path} has no command {name!r}"]
        group, path = sub, f"{path} {name}"
        if _is_group(group):
            tokens, more = _consume_options(group, tokens, command, stop_at_positional=True)
            errors += more
    positional, more = _consume_options(group, tokens, command)
    errors += more
    args = [p for p in group.params if p.param_type_name == "argument"]
    unlimited = any(p.nargs == -1 for p in args)
    most = sum(max(p.nargs, 0) for p in args)
    least = sum(max(p.nargs, 1) if p.nargs == -1 else p.nargs for p in args if p.required)
    if not unlimited and len(positional) > most:
        errors.append(f"{command!r}: {path} takes {most} argument(s), got {positional}")
    if complete and len(positional) < least:
        errors.append(f"{command!r}: {path} needs {least} argument(s), got {len(positional)}")
    return errors


def _is_group(command) -> bool:
    return hasattr(command, "commands")  # typer may vendor click: recognised by shape


def _consume_options(
    command, tokens: list[str], text: str, *, stop_at_positional: bool = False
) -> tuple[list[str], list[str]]:
    """Check the options in `tokens` against `command`; returns the positional tokens (or, for a
    group, the tokens from the first positional one on) and the problems."""
    options = {name: p for p in command.params if p.param_type_name == "option"
               for name in (*p.opts, *p.secondary_opts)}
    options.update({"--help": None, "-h": None})
    positional, errors, i = [], [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and len(tok) > 1 and not _is_number(tok):
            name, has_value = tok.split("=", 1)[0], "=" in tok
            if name not in options:
                errors.append(f"{text!r}: {command.name or 'sparseinst'} has no option {name}")
            else:
                param = options[name]
                takes_value = param is not None and not (param.is_flag or param.count)
                i += 1 if takes_value and not has_value else 0
        elif stop_at_positional:
            return tokens[i:], errors
        else:
            positional.append(tok)
        i += 1
    return positional, errors


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def test_the_docs_have_commands_to_check():
    found = [c for page in PAGES for c in commands_in(page.read_text(encoding="utf-8"))]
    assert len(found) > 40
    assert {c.split()[1] for c, _ in found if len(c.split()) > 1} >= {
        "train", "eval", "bench", "predict", "export", "data"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_in_the_docs_parses(page):
    found = commands_in(page.read_text(encoding="utf-8"))
    errors = [e for command, complete in found for e in problems(command, complete)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files: {missing}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("sparseinst train --no-such-option 3", "train has no option --no-such-option"),
        ("sparseinst trian --config demo", "has no command 'trian'"),
        ("sparseinst data chek --data demo", "sparseinst data has no command 'chek'"),
        ("sparseinst export --weights m.pth extra.pth", "takes 0 argument(s)"),
        ("sparseinst predict --weights m.pth", "needs 1 argument(s)"),
        ("sparseinst --verbose eval --weights m.pth", "has no option --verbose"),
    ],
)
def test_the_checker_reports_a_broken_command(command, expected):
    assert any(expected in p for p in problems(command)), problems(command)


def test_the_checker_finds_commands_in_blocks_and_inline_code():
    page = ("Run `sparseinst eval --weights W --bogus` or:\n\n```bash\n"
            "SPARSEINST_PROGRESS_EVERY=5 .venv/bin/sparseinst predict a.jpg \\\n"
            "    --weights m.pth --nope > log.txt   # a comment\n```\n")
    found = commands_in(page)
    assert len(found) == 2
    errors = [e for command, complete in found for e in problems(command, complete)]
    assert any("--bogus" in e for e in errors) and any("--nope" in e for e in errors)
    assert problems("sparseinst predict images/ --weights m.pth --out viz/ --save-json") == []
    assert problems("sparseinst eval -w m.pth --data d.yaml test.mask_threshold=0.5") == []
