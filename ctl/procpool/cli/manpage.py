"""Man pages made from the commands' own help: ``procctl(1)`` and ``procpoold(8)``.

``python -m procpool.cli.manpage DIR`` writes ``DIR/man1/procctl.1`` and ``DIR/man8/procpoold.8``
(``make install`` writes them under /usr/local/share/man; ``make man`` into build/man). One page
per program with a section per command, as systemctl(1) has, so that ``man procctl`` shows
everything in one place; the text is the ``--help`` text, so there is nothing to keep in step by
hand.

Written here rather than with click-man: that tool makes a page per subcommand (procctl-submit(1)
and so on), and would be one more package in the service's environment for a build step.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

#: what each page documents: (module, attribute, program, section, one-line summary)
PAGES = (
    ("procpool.cli.main", "cli", "procctl", 1, "drive the procpool daemon"),
    ("procpoold.app", "cli", "procpoold", 8, "the procpool job-tree supervisor daemon"),
)


def _escape(text: str) -> str:
    """Text as roff reads it literally: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def _paragraphs(text: str) -> Iterator[str]:
    """The help text as roff paragraphs: click's ``\\b`` blocks stay as written (no fill)."""
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        if lines and lines[0].strip() == "\b":
            body = "\n".join(line.rstrip() for line in lines[1:])
            yield f".PP\n.nf\n{_escape(body)}\n.fi"
        else:
            yield ".PP\n" + _escape(" ".join(line.strip() for line in lines if line.strip()))


def _options(ctx: click.Context, with_help: bool = True) -> list[str]:
    out = []
    for param in ctx.command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None or (not with_help and "--help" in param.opts):  # hidden options
            continue
        names, help_text = record
        out.append(f".TP\n.B {_escape(names)}\n{_escape(help_text)}" if help_text else
                   f".TP\n.B {_escape(names)}")
    return out


def _usage(ctx: click.Context) -> str:
    return " ".join([ctx.command_path, *ctx.command.collect_usage_pieces(ctx)])


def _commands(ctx: click.Context) -> Iterator[str]:
    """A ``.SS`` section per command of a group, subgroups' commands included."""
    group = ctx.command
    if not isinstance(group, click.Group):
        return
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = click.Context(sub, info_name=name, parent=ctx)
        yield f".SS {_escape(_usage(sub_ctx))}"
        yield from _paragraphs(sub.help or sub.short_help or "")
        yield from _options(sub_ctx, with_help=False)
        yield from _commands(sub_ctx)


def render(command: click.Command, prog: str, section: int, summary: str, version: str) -> str:
    """The man page of ``command`` as roff (man(7) macros)."""
    ctx = click.Context(command, info_name=prog)
    when = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))
    lines = [
        f'.TH {prog.upper()} {section} "{time.strftime("%Y-%m-%d", when)}" "procpool {version}" '
        '"procpool manual"',
        ".SH NAME",
        f"{prog} \\- {_escape(summary)}",
        ".SH SYNOPSIS",
        f".B {_escape(_usage(ctx))}",
        ".SH DESCRIPTION",
        *_paragraphs(command.help or ""),
        ".SH OPTIONS",
        *_options(ctx),
    ]
    commands = list(_commands(ctx))
    if commands:
        lines += [".SH COMMANDS", *commands]
    others = [f"\\fB{p}\\fR({s})" for _m, _a, p, s, _ in PAGES if p != prog]
    lines += [".SH SEE ALSO", ", ".join([*others, "\\fBjournalctl\\fR(1)", "\\fBsystemctl\\fR(1)"])]
    return "\n".join(lines) + "\n"


def write_all(folder: Path) -> list[Path]:
    """Write every page under ``folder`` (``man1/``, ``man8/``); return their paths."""
    from procpool.contract.version import __version__

    written = []
    for module, attr, prog, section, summary in PAGES:
        command = getattr(importlib.import_module(module), attr)
        target = folder / f"man{section}" / f"{prog}.{section}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(command, prog, section, summary, __version__))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit("usage: python -m procpool.cli.manpage DIR (writes man1/procctl.1, man8/procpoold.8 in DIR)")
    for path in write_all(Path(args[0])):
        print(path)


if __name__ == "__main__":
    main()
