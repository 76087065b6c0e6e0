"""autodoc2's MyST renderer, showing a module constant's or attribute's value only when it is known.

autodoc2 records a value only for simple literals; for the rest (a dict, a computed tuple) it has None,
which its renderer printed as the value, so that every such constant read "None". Here an unknown
value is left out; a known one is rendered as autodoc2 renders it.
"""
import typing as t

from autodoc2.render.myst_ import MystRenderer


class Renderer(MystRenderer):
    def render_data(self, item) -> t.Iterable[str]:
        lines = list(super().render_data(item))
        if item.get("value") is not None:
            return lines
        start = lines.index(":value: >")
        return lines[:start] + lines[start + 2:]
