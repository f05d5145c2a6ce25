"""The console's charts: pygal renders each to a standalone SVG document, server-side.

Served as images (``<img src=...svg>``), so an SVG's own styles never need the page's
CSP to allow inline styles, and no chart ever runs a script (pygal's tooltip script is
turned off, ``js=[]``, and its config script removed). Every chart has a table beside it
with the same figures.
"""

from __future__ import annotations

from xml.etree import ElementTree

import pygal
from pygal.style import Style

STYLE = Style(background="white", plot_background="#f7f7f9", foreground="#222",
              foreground_strong="#111", foreground_subtle="#666", opacity=".9",
              colors=("#c0392b", "#2471a3", "#d68910", "#7d3c98", "#17a589", "#5d6d7e",
                      "#a04000", "#1e8449"))
SPEND_STYLE = Style(**{**STYLE.to_dict(), "colors": ("#c0392b", "#d68910", "#d5dbdb")})
COMMON = {"js": [], "disable_xml_declaration": True, "style": STYLE, "width": 900, "height": 320,
          "legend_at_bottom": True, "truncate_legend": 40, "print_values": False}


def denials(buckets: list[str], series: dict[str, list[int]]) -> bytes:
    """Denied decisions per time bucket, stacked by reason code."""
    chart = pygal.StackedBar(title="Denials by reason", x_label_rotation=30,
                             show_minor_x_labels=len(buckets) <= 24, **COMMON)
    chart.x_labels = buckets
    chart.x_labels_major = buckets[::max(1, len(buckets) // 12)]
    for code, counts in sorted(series.items()):
        chart.add(code, counts)
    return _render(chart)


def spend(windows: list[tuple[str, float, float, float | None]]) -> bytes:
    """Per budget window (label, spent, reserved, budget): spent and reserved stacked,
    and what is left of the budget."""
    chart = pygal.HorizontalStackedBar(title="Spend against budget (USD)",
                                       **{**COMMON, "style": SPEND_STYLE})
    chart.x_labels = [w[0] for w in windows]
    chart.add("spent", [w[1] for w in windows])
    chart.add("reserved", [w[2] for w in windows])
    chart.add("left", [max(0.0, w[3] - w[1] - w[2]) if w[3] is not None else None
                       for w in windows])
    return _render(chart)


def _render(chart: pygal.graph.graph.Graph) -> bytes:
    """The SVG without pygal's config script (it only feeds the tooltip script, which is
    off): the document holds no script at all, whatever shows it."""
    root = chart.render_tree()
    for parent in root.iter():
        for child in [c for c in parent if str(c.tag).rsplit("}", 1)[-1] == "script"]:
            parent.remove(child)
    return ElementTree.tostring(root, encoding="utf-8")
