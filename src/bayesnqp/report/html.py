"""The HTML report: sections of tables (also written as CSV, Markdown, LaTeX) and figures (PNG).

Built into a folder that the pipeline later moves into place, so a failed run leaves nothing behind.
Every page of a run on synthetic data carries the SYNTHETIC DEMO DATA banner.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment  # noqa: E402

from ..names import SYNTHETIC_BANNER  # noqa: E402


class TableLike(Protocol):
    """A paper-style table (report.tables.PaperTable) offers these."""

    note: str

    def to_html(self) -> str: ...
    def to_markdown(self) -> str: ...
    def to_latex(self) -> str: ...
    def to_csv(self, path: Path) -> None: ...


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


@dataclass
class Block:
    kind: str  # table | figure | text | skip | flag
    html: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


class ReportBuilder:
    """Collects sections; ``render()`` writes index.html. Tables go to tables/, figures to figures/."""

    def __init__(self, out: Path, *, title: str, synthetic: bool, meta: dict[str, Any]):
        self.out = out
        self.title = title
        self.synthetic = synthetic
        self.meta = meta
        self.sections: list[Section] = []
        (out / "tables").mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def section(self, sid: str, title: str) -> Section:
        for s in self.sections:
            if s.id == sid:
                return s
        s = Section(sid, title)
        self.sections.append(s)
        return s

    def text(self, section: Section, text: str, *, raw_html: bool = False) -> None:
        body = text if raw_html else "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
        section.blocks.append(Block("text", body))

    def skip(self, section: Section, reason: str) -> None:
        section.blocks.append(Block("skip", f'<p class="skip">Skipped: {html.escape(reason)}</p>'))

    def flag(self, section: Section, message: str) -> None:
        section.blocks.append(Block("flag", f'<p class="flag">&#9888; {html.escape(message)}</p>'))

    def table(self, section: Section, name: str, table: pd.DataFrame | TableLike, caption: str,
              note: str = "", digits: int = 4) -> None:
        """Write tables/<name>.csv/.md/.tex and put the HTML into the section."""
        stem = _slug(name)
        base = self.out / "tables" / stem
        table.to_csv(base.with_suffix(".csv"))
        if isinstance(table, pd.DataFrame):
            formatted = table.map(lambda v: _fmt(v, digits))
            markdown, latex = formatted.to_markdown(), formatted.to_latex(escape=True)
            body = formatted.to_html(classes="data", border=0, escape=True)
        else:
            markdown, latex = table.to_markdown(), table.to_latex()
            body = table.to_html()  # carries its own note (standard errors, stars) in the footer
        # every page made from the demo says so, the exported tables included
        stamp_md, stamp_tex = (f"\n*{SYNTHETIC_BANNER}*\n", f"% {SYNTHETIC_BANNER}\n") if self.synthetic else ("", "")
        base.with_suffix(".md").write_text(markdown + "\n" + stamp_md, encoding="utf-8")
        base.with_suffix(".tex").write_text(latex + "\n" + stamp_tex, encoding="utf-8")
        links = " ".join(f'<a href="tables/{stem}{ext}">{ext[1:]}</a>' for ext in (".csv", ".md", ".tex"))
        note_html = "".join(f"<br>{html.escape(line)}" for line in note.splitlines() if line)
        section.blocks.append(Block("table", f'<figure class="table"><figcaption>{html.escape(caption)}'
                                             f'</figcaption>{body}<p class="note">{links}{note_html}</p>'
                                             "</figure>"))

    def figure(self, section: Section, name: str, fig: Any, caption: str) -> None:
        stem = _slug(name)
        path = self.out / "figures" / f"{stem}.png"
        if self.synthetic:
            fig.text(0.5, 0.005, SYNTHETIC_BANNER, ha="center", va="bottom", fontsize=8, color="#b00020")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        section.blocks.append(Block("figure", f'<figure><img src="figures/{stem}.png" alt="{html.escape(caption)}">'
                                              f"<figcaption>{html.escape(caption)}</figcaption></figure>"))

    def render(self) -> Path:
        env = Environment(autoescape=False)
        page = env.from_string(_TEMPLATE).render(
            title=html.escape(self.title), banner=SYNTHETIC_BANNER if self.synthetic else "",
            sections=self.sections, meta={k: html.escape(str(v)) for k, v in self.meta.items()},
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        path = self.out / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** (-digits)):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:0 auto;padding:0 1.2em 3em;color:#222;line-height:1.45}
.banner{position:sticky;top:0;background:#b00020;color:#fff;text-align:center;font-weight:700;padding:.35em;letter-spacing:.08em;z-index:2}
h1{margin-top:.6em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav ol{columns:2;font-size:.95em} table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
table.data td,table.data th,table.paper td,table.paper th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
table.data th:first-child,table.paper td:first-child,table.paper tbody th{text-align:left}
.table{overflow-x:auto}
figure{margin:1.2em 0} figcaption{font-weight:600;margin-bottom:.3em} img{max-width:100%}
.note{font-size:.85em;color:#555} .skip{color:#666;font-style:italic} .flag{color:#8a4b00;background:#fff4e0;padding:.3em .6em;border-left:4px solid #e89b00}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:.9em} dl.meta dt{font-weight:600}
</style></head><body>
{% if banner %}<div class="banner">{{ banner }} &mdash; not real statistics of any city</div>{% endif %}
<h1>{{ title }}</h1>
<dl class="meta">{% for k, v in meta.items() %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}<dt>generated</dt><dd>{{ generated }}</dd></dl>
<nav><ol>{% for s in sections %}<li><a href="#{{ s.id }}">{{ s.title }}</a></li>{% endfor %}</ol></nav>
{% for s in sections %}<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
{% for b in s.blocks %}{{ b.html }}
{% endfor %}</section>
{% endfor %}
{% if banner %}<div class="banner">{{ banner }}</div>{% endif %}
</body></html>
"""
