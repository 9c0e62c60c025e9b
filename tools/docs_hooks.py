"""MkDocs hooks: pages generated at build time, so that the site never drifts from the code.

- index.md: the README, with its links rewritten for the site (docs/x -> x; files outside docs/ become
  plain code, since the site does not serve them);
- cli.md: the help of every `ddpm` command, printed by the parser itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _site_link(match: re.Match) -> str:
    bang, text, target = match.groups()
    if re.match(r"[a-z]+://|#|mailto:", target):
        return match.group(0)
    if target.startswith("docs/"):
        return f"{bang}[{text}]({target[len('docs/') :]})"
    return f"`{target}`" if not text or text == target else f"{text} (`{target}`)"


def readme_page() -> str:
    return LINK.sub(_site_link, (ROOT / "README.md").read_text())


def cli_page() -> str:
    from ddpmkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = ["# Command line\n", "Generated from the parser: what `ddpm COMMAND --help` prints.\n"]
    for name, p in sub.choices.items():
        parts.append(f"## ddpm {name}\n\n```text\n{p.format_help()}```\n")
    return "\n".join(parts)


def on_files(files, config):
    for name, text in (("index.md", readme_page()), ("cli.md", cli_page())):
        files.append(File.generated(config, name, content=text))
    return files
