"""The MyST parser for the API reference's docstrings, with placeholders kept as text.

Docstrings name paths such as results/<profile>/<group>/<run>/results.json. MyST, like CommonMark,
passes `<profile>` through as an HTML tag, which the browser hides ("results////results.json"). Outside
code spans and code blocks, such a placeholder is escaped (`\\<profile\\>`) before parsing; autolinks
(`<https://...>`) stay links.
"""
import re

from myst_parser.parsers.sphinx_ import MystParser

PLACEHOLDER = re.compile(r"<(?![a-z]+://)([A-Za-z_][^<>`\n]*)>")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def escape_placeholders(text):
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or line.startswith("    "):
            lines.append(line)
            continue
        parts, last = [], 0
        for code in CODE_SPAN.finditer(line):
            parts.append(PLACEHOLDER.sub(r"\\<\1\\>", line[last:code.start()]))
            parts.append(code.group(0))
            last = code.end()
        parts.append(PLACEHOLDER.sub(r"\\<\1\\>", line[last:]))
        lines.append("".join(parts))
    return "\n".join(lines)


class Parser(MystParser):
    def parse(self, inputstring, document):
        super().parse(escape_placeholders(inputstring), document)
