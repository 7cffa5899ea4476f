"""The HTML report: sections of tables (also written as CSV, Markdown, LaTeX) and figures (PNG).

Built into a folder that the pipeline later moves into place, so a failed run leaves nothing behind.
Every page of a run on synthetic data carries the SYNTHETIC DEMO DATA banner.

The page opens on the overview (report.overview: verdict, headline effects, convergence roll-up, every
flag, the forest plot), then a sticky table of contents beside the sections; every table and figure has an
anchor. Each Bayesian model sits in its own collapsible block. Per-unit tables (one row per city or
whatever the user's unit is) go to CSV only, with the unit names, and appear in the page as a
caterpillar plot, or as one sentence when the values are degenerate. The page needs nothing online:
sorting is a small inline script.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from jinja2 import Environment

from ..names import SYNTHETIC_BANNER
from .labels import Labels
from .numbers import shorten
from .latex import LatexTable, write_master
from .numbers import format_frame


class TableLike(Protocol):
    """A paper-style table (report.tables.PaperTable) offers these."""

    title: str
    frame: pd.DataFrame
    note: str

    def to_markdown(self) -> str: ...
    def to_csv(self, path: Path) -> Any: ...


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


# Display names of the columns the analyses produce (CSV files keep the raw names).
COLUMN_NAMES = {"r_hat": "r\u0302", "ess_bulk": "ESS bulk", "ess_tail": "ESS tail", "post_mean": "posterior mean",
                "post_sd": "posterior sd", "std_error": "SE", "sd_ratio": "sd ratio", "p_value": "p",
                "ci_low": "lower", "ci_high": "upper", "ci_width": "interval width", "estimate": "estimate",
                "meant_to_match": "meant to match", "bootstrap_sd": "bootstrap sd", "moran_I": "Moran's I",
                "p_permutation": "p (permutation)"}
# Tables with more columns than this and few rows are shown transposed.
WIDE_COLUMNS = 10
# Tables longer than this fold away behind "show all rows".
FOLD_ROWS = 25
# A table with at least this many rows keyed by the panel's units is a per-unit table (CSV + plot).
UNIT_TABLE_ROWS = 20
# Figures taller than this (inches) fold away behind a link instead of stretching the page.
TALL_FIGURE_IN = 9.0


@dataclass
class Block:
    kind: str  # table | figure | text | skip | flag
    html: str
    anchor: str = ""
    title: str = ""
    group: str | None = None
    reason: str = ""  # skip lines: the reason as given


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    current_group: str | None = None
    groups: dict[str, str] = field(default_factory=dict)  # model id -> title
    hidden: bool = False
    notes_seen: set[str] = field(default_factory=set)


def tidy_text(text: str) -> str:
    """Plain prose: no RST markup, no pointers to settings a user cannot set, no 'nan'."""
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r":(?:func|class|mod|meth|data):`~?([^`]+)`", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"(?:^|(?<=[\s:.]))\*\s+(?=[A-Za-z]{2,})", "", text)  # RST bullets ("* SAR / SDM: ...")
    # model-spec options are settings of models/*.toml, not of the study config
    text = re.sub(r"\boptions\.(\w+)", r"the model specification's '\1' setting", text)
    text = re.sub(r",? min BFMI nan", ", BFMI not available", text)
    text = re.sub(r"\bnan\b", "n/a", text)
    text = text.replace("r_hat", "r\u0302")
    return re.sub(r"[ \t]+", " ", text).strip()


def _without_paper(text: str) -> str:
    """The text without its sentences about the published paper (for data that are not its design)."""
    sentences = re.split(r"(?<=[.;])\s+(?=[A-Z(])", text)
    return " ".join(x for x in sentences if not re.search(r"\bpaper(?:'s)?\b", x, re.I)).strip()


class ReportBuilder:
    """Collects sections; ``render()`` writes index.html and tables/tables.tex."""

    def __init__(self, out: Path, *, title: str, synthetic: bool, meta: dict[str, Any],
                 labels: Labels | None = None):
        self.out = out
        self.title = title
        self.synthetic = synthetic
        self.meta = meta
        self.labels = labels or Labels()
        self.sections: list[Section] = []
        self.overview_html = ""
        self.unit_ids: set[str] = set()
        self.unit_names: dict[str, str] = {}
        self.tex_stems: list[str] = []
        self.pending_flags: list[dict[str, str]] = []  # report-side flags (admissibility), merged at the end
        (out / "tables").mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(parents=True, exist_ok=True)

    # -- setup ---------------------------------------------------------------------------------------
    def set_units(self, ids: Iterable[str], unit_names: Mapping[str, str] | None = None) -> None:
        """The panel's unit ids (to recognise per-unit tables) and their display names."""
        self.unit_ids = {str(i) for i in ids}
        self.unit_names = {str(k): str(v) for k, v in (unit_names or {}).items()}

    def section(self, sid: str, title: str) -> Section:
        for s in self.sections:
            if s.id == sid:
                return s
        if not self.labels.paper:  # "Table 3 rebuilt: X" names the paper's table: just "X"
            title = re.sub(r"^Table \d+ rebuilt: ", "", title)
            title = re.sub(r"\s*\(the paper's Table \d+\)", "", title)
            title = title[:1].upper() + title[1:]
        s = Section(sid, self.labels.text(title))
        self.sections.append(s)
        return s

    def end_group(self, section: Section) -> None:
        """Close the model block a section is filling (text after it belongs to the section again)."""
        section.current_group = None

    def _add(self, section: Section, block: Block) -> Block:
        if block.group is None:
            block.group = section.current_group
        section.blocks.append(block)
        return block

    def _open_group(self, section: Section, gid: str) -> None:
        """A model's posterior table starts its block; the diagnostics line and flags just before it that
        name the model move into the block too."""
        section.current_group = gid
        title = gid
        for b in reversed(section.blocks):  # (they may have been taken into the previous model's block)
            if b.kind not in ("text", "flag") or gid not in b.html:
                break
            b.group = gid
            m = re.search(r"<p>(.*?) \(" + re.escape(gid) + r"\)\.", b.html)
            if m:
                title = html.unescape(m.group(1))
        section.groups.setdefault(gid, title)

    def _caption(self, section: Section, caption: str) -> str:
        """'bayes_x: ppc density normal' -> '<model title>: PPC density normal'."""
        caption = tidy_text(caption)
        for gid, title in section.groups.items():
            for pre in (f"{gid}: ", f"{gid} "):
                if caption.startswith(pre):
                    rest = caption[len(pre):]
                    caption = f"{title}: {rest[:1].upper() + rest[1:]}" if title != gid else caption
        caption = re.sub(r"\bppc\b", "PPC", caption, flags=re.I)
        return self.labels.text(caption)

    def _shared_note(self, section: Section, note: str) -> str:
        """A long explanation repeated under every model of a section is printed once, under the first."""
        out = []
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z])", note):
            if len(sentence) > 120 and sentence in section.notes_seen:
                if "(as explained above)" not in out:
                    out.append("(as explained above)")
                continue
            section.notes_seen.add(sentence)
            out.append(sentence)
        return " ".join(out)

    # -- blocks --------------------------------------------------------------------------------------
    def text(self, section: Section, text: str, *, raw_html: bool = False) -> None:
        if raw_html:
            self._add(section, Block("text", text))
            return
        paras = [self.labels.text(tidy_text(p)) for p in text.split("\n\n") if p.strip()]
        if not self.labels.paper:  # comparisons with the published study only for its own design
            paras = [_without_paper(p) for p in paras]
            paras = [p for p in paras if p]
        seen = {b.html for b in section.blocks if b.kind == "text"}
        body = "".join(f"<p>{html.escape(p)}</p>" for p in paras)
        if body and body not in seen:  # the same note twice in a section is shown once
            self._add(section, Block("text", body))

    def skip(self, section: Section, reason: str) -> None:
        shown = self.labels.text(tidy_text(reason))
        self._add(section, Block("skip", f'<p class="skip">Not run: {html.escape(shown)}</p>', reason=reason))

    def flag(self, section: Section, message: Any) -> None:
        if isinstance(message, dict):
            message = message.get("message", "")
        msg = self.labels.text(tidy_text(str(message)))
        if not self.labels.paper:
            msg = _without_paper(msg)
            if not msg:
                return
        self._add(section, Block("flag", f'<p class="flag">&#9888; {html.escape(msg)}</p>'))

    def table(self, section: Section, name: str, table: pd.DataFrame | TableLike, caption: str,
              note: str = "", digits: int = 4, *, first: bool = False) -> None:
        """Write tables/<name>.csv/.md/.tex and put the HTML into the section."""
        stem = _slug(name)
        if stem.endswith("_posterior") and not first:
            self._open_group(section, stem.removesuffix("_posterior"))
        caption = self._caption(section, caption)
        note = self._shared_note(section, self.labels.text(tidy_text(note))) if note else ""
        base = self.out / "tables" / stem
        if isinstance(table, pd.DataFrame) and self._is_unit_table(table):
            self._unit_table(section, stem, table, caption, note)
            return
        if isinstance(table, pd.DataFrame):
            table.to_csv(base.with_suffix(".csv"))
            cells, show_index, index_label = self._display_cells(table)
            markdown = cells.to_markdown(index=show_index)
            latex = LatexTable(stem=stem, caption=caption, cells=cells, note=note or self._glossary(table),
                               index_label=index_label, show_index=show_index).render()
            body = _html_table(cells, show_index, index_label)
        else:
            frame = table.frame.copy()
            frame.index = [self.labels.text(self.labels.term(str(i))) if str(i) else "" for i in frame.index]
            table_note = self.labels.text(table.note)
            # the user's words in the files too (the frame holds display strings only)
            frame.to_csv(base.with_suffix(".csv"), index_label="")
            markdown = _paper_markdown(caption or table.title, frame, table_note)
            latex = LatexTable(stem=stem, caption=caption or table.title, cells=frame,
                               note=" ".join(x for x in (table_note.removeprefix("Note: "), note) if x)).render()
            body = _html_table(frame, True, "", paper=True)
            note = " ".join(x for x in (table_note, note) if x)
        # every page made from the demo says so, the exported tables included
        stamp_md, stamp_tex = (f"\n*{SYNTHETIC_BANNER}*\n", f"% {SYNTHETIC_BANNER}\n") if self.synthetic else ("", "")
        base.with_suffix(".md").write_text(markdown + "\n" + stamp_md, encoding="utf-8")
        base.with_suffix(".tex").write_text(stamp_tex + latex, encoding="utf-8")
        if stem not in self.tex_stems:
            self.tex_stems.append(stem)
        links = " ".join(f'<a href="tables/{stem}{ext}">{ext[1:]}</a>' for ext in (".csv", ".md", ".tex"))
        n_rows = body.count("<tr>") - 1
        if n_rows > FOLD_ROWS:
            body = f'<details class="rows"><summary>Show all {n_rows} rows</summary>{body}</details>'
        note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
        block = Block("table", f'<figure class="table" id="tbl-{stem}"><figcaption>{html.escape(caption)}'
                               f'</figcaption><div class="scroll">{body}</div>{note_html}'
                               f'<p class="files">Download: {links}</p></figure>',
                      anchor=f"tbl-{stem}", title=caption)
        if first:  # before the first model block (after the section's introduction)
            block.group = None
            at = next((i for i, b in enumerate(section.blocks) if b.group is not None), len(section.blocks))
            section.blocks.insert(at, block)
        else:
            self._add(section, block)

    def _glossary(self, table: pd.DataFrame) -> str:
        """A note for a table that came without one (a paper's table always has one): what its columns mean."""
        cols = {str(c) for c in table.columns} | {str(n) for n in table.index.names if n}
        bayes = "r_hat" in cols or "post_mean" in cols
        words = {"ci_low": "lower and upper: bounds of the 94% highest-density interval" if bayes
                 else "lower and upper: bounds of the 95% confidence interval",
                 "std_error": "SE: standard error", "r_hat": "r-hat: potential scale reduction (1 at convergence)",
                 "ess_bulk": "ESS: effective sample size of the posterior draws",
                 "z": "z: (posterior mean - estimate) / SE" if bayes or "post_mean" in cols else "z: test statistic",
                 "sd_ratio": "sd ratio: posterior sd / SE", "p_value": "p: p-value",
                 "p_permutation": "p (permutation): share of permuted statistics at least as extreme"}
        parts = [text for key, text in words.items() if key in cols]
        source = f"computed from {Path(str(self.meta.get('data', ''))).name or 'the data'}"
        return "; ".join([*parts, source])[:1].upper() + "; ".join([*parts, source])[1:] + "."

    def _display_cells(self, table: pd.DataFrame) -> tuple[pd.DataFrame, bool, str]:
        """Formatted strings; a MultiIndex or a named index becomes ordinary columns (no header row of
        its own); a plain 0..n-1 index is not shown."""
        frame = table.copy()
        show_index = True
        if isinstance(frame.index, pd.MultiIndex):
            frame = frame.reset_index()
            show_index = False
        elif isinstance(frame.index, pd.RangeIndex):
            show_index = False
        index_label = str(frame.index.name or "") if show_index else ""
        cells = format_frame(frame)
        # header words wrap only at spaces: direct_std_error -> direct std error
        cells.columns = [self.labels.term(COLUMN_NAMES.get(str(c), str(c))).replace("_", " ") for c in frame.columns]
        if show_index and len(cells.columns) > WIDE_COLUMNS and len(cells) <= WIDE_COLUMNS // 2 + 2:
            # many statistics of a few terms: one row per statistic reads (and fits) better
            cells.index = [self.labels.text(self.labels.term(str(i))) for i in frame.index]
            cells = cells.T
            return cells, True, ""
        # string cells (formulas, term names) in the user's words too
        for j in range(cells.shape[1]):
            if frame.iloc[:, j].dtype == object:
                cells.iloc[:, j] = [self.labels.text(self.labels.term(v)) if isinstance(v, str) else v
                                    for v in cells.iloc[:, j]]
        if show_index:
            cells.index = [self.labels.text(self.labels.term(str(i))) for i in frame.index]
        return cells, show_index, self.labels.term(index_label)

    # -- per-unit tables -----------------------------------------------------------------------------
    def _is_unit_table(self, table: pd.DataFrame) -> bool:
        if not self.unit_ids or len(table) < UNIT_TABLE_ROWS:
            return False
        idx = table.index.get_level_values(0) if isinstance(table.index, pd.MultiIndex) else table.index
        keys = {str(i) for i in idx}
        return len(keys & self.unit_ids) >= 0.9 * len(keys)

    def _unit_table(self, section: Section, stem: str, table: pd.DataFrame, caption: str, note: str) -> None:
        """CSV with the unit names; in the page a caterpillar plot, or one sentence when degenerate."""
        from .figures import caterpillar

        lab = self.labels
        csv = table.copy()
        idx = csv.index.get_level_values(0) if isinstance(csv.index, pd.MultiIndex) else csv.index
        if self.unit_names:
            csv.insert(0, "name", [self.unit_names.get(str(i), "") for i in idx])
        csv.index = csv.index.set_names([lab.columns.get("city") or lab.unit] + list(csv.index.names[1:]))
        path = self.out / "tables" / f"{stem}.csv"
        csv.to_csv(path)
        link = f'<a href="tables/{stem}.csv">{stem}.csv</a>'
        value_col = "mean" if "mean" in table.columns else next(
            (c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])), None)
        values = pd.to_numeric(table[value_col], errors="coerce").to_numpy(dtype=float) if value_col else np.array([])
        finite = values[np.isfinite(values)]
        sentence = ""
        if finite.size == 0:
            sentence = f"{caption}: no values."
        else:
            scale = float(np.max(np.abs(finite)))
            spread = float(np.ptp(finite))
            if scale < 1e-10:
                sentence = (f"{caption}: zero in every {lab.unit} up to rounding error (largest |value| "
                            f"{scale:.1e}). The model has no channel for this effect (no spillover term), so it is "
                            "not shown; its intervals only measure numerical noise.")
            elif spread <= 1e-9 * scale:
                sentence = (f"{caption}: the same value, {finite[0]:.4g}, in every {lab.unit}; in this model it does "
                            f"not vary by {lab.unit} (it equals the coefficient itself), so no per-{lab.unit} "
                            "display is shown.")
        if sentence or value_col is None:
            self._add(section, Block("text", f'<p class="degenerate">{html.escape(sentence)} Values: {link}.</p>'))
            return
        assert value_col is not None
        fig = caterpillar(table, value_col, caption=caption, unit_plural=lab.units, names=self.unit_names)
        self.figure(section, f"{stem}_caterpillar", fig,
                    f"{caption} (one {lab.unit} per point, sorted; the table is in {stem}.csv)",
                    extra_html=f'<p class="files">Per-{html.escape(lab.unit)} values with names: {link}'
                               + (f". {html.escape(note)}" if note else "") + "</p>")

    # -- figures -------------------------------------------------------------------------------------
    def save_figure(self, name: str, fig: Any, alt: str) -> str:
        """figures/<name>.png (banner below the axes on synthetic data); returns the <img> element."""
        stem = _slug(name)
        path = self.out / "figures" / f"{stem}.png"
        if not hasattr(fig.canvas, "get_renderer"):  # a Figure() made without pyplot has no drawing canvas
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            FigureCanvasAgg(fig)
        banner = SYNTHETIC_BANNER if self.synthetic else ""
        try:
            _tidy_figure(fig, self.labels)
            _stamp(fig, banner)
        except Exception:  # noqa: BLE001 - cosmetics must never end a run that has sampled for minutes
            if banner and not any(t.get_text() == banner for t in fig.texts):
                fig.text(0.5, 0.005, banner, ha="center", va="bottom", fontsize=8, color="#b00020")
        width, height = fig.get_size_inches()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if "matplotlib.pyplot" in sys.modules:  # a figure made through pyplot elsewhere: release it
            sys.modules["matplotlib.pyplot"].close(fig)
        img = (f'<img src="figures/{stem}.png" alt="{html.escape(alt)}" '
               f'style="max-width:min(100%,{int(width * 110)}px)">')
        if height > TALL_FIGURE_IN:  # a tall figure folds away rather than stretching the page
            img = f'<details class="tall"><summary>Show the figure ({height:.0f} in tall)</summary>{img}</details>'
        return img

    def figure(self, section: Section, name: str, fig: Any, caption: str, *, extra_html: str = "") -> None:
        stem = _slug(name)
        caption = self._caption(section, caption)
        img = self.save_figure(stem, fig, caption)
        self._add(section, Block("figure", f'<figure id="fig-{stem}">{img}<figcaption>{html.escape(caption)}'
                                           f"</figcaption>{extra_html}</figure>",
                                 anchor=f"fig-{stem}", title=caption))

    def anchor_for(self, analysis_id: str) -> str:
        """The anchor of the place an analysis id is shown: its model block, its table, else its section."""
        aid = _slug(analysis_id)
        for s in self.sections:
            if aid in s.groups:
                return aid
        anchors = [b.anchor for s in self.sections for b in s.blocks if b.anchor]
        for cand in (f"tbl-{aid}", f"fig-{aid}"):
            if cand in anchors:
                return cand
        parts = aid.split("_")
        for k in range(len(parts) - 1, 0, -1):  # table3_col4 -> table3, robustness_lagged -> robustness
            stem = "_".join(parts[:k])
            for s in self.sections:
                for g in s.groups:
                    if g == stem:
                        return g
            for a in anchors:
                if a == f"tbl-{stem}" or a == f"fig-{stem}":
                    return a
        for s in self.sections:
            if s.id == aid or any(aid in b.html for b in s.blocks):
                return s.id
        return "overview"

    # -- page ----------------------------------------------------------------------------------------
    def render(self) -> Path:
        env = Environment(autoescape=False)
        sections = [s for s in self.sections if not s.hidden and s.blocks]
        page = env.from_string(_TEMPLATE).render(
            title=html.escape(self.title), banner=SYNTHETIC_BANNER if self.synthetic else "",
            overview=self.overview_html, toc=_toc(sections, forest="fig-forest_key_effect" in self.overview_html),
            body="\n".join(_section_html(s) for s in sections),
            meta={k: html.escape(str(v)) for k, v in self.meta.items()},
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), script=_SCRIPT, style=_STYLE)
        path = self.out / "index.html"
        path.write_text(page, encoding="utf-8")
        write_master(self.out / "tables", self.tex_stems, title=self.title,
                     banner=SYNTHETIC_BANNER if self.synthetic else "")
        return path


def _tidy_figure(fig: Any, labels: Labels) -> None:
    """Display fixes every figure gets, whoever drew it: the user's words in every text; legends that
    would cover data moved beside the axes; histogram panels of a predictive check labelled."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        old = t.get_text()
        new = labels.text(old)
        if not labels.paper:
            new = re.sub(r"(?<![A-Za-z])nqp(?![A-Za-z])", labels.outcome, new)
            new = re.sub(r"(?<![A-Za-z])agglomeration(?![A-Za-z])", labels.treatment, new)
        if new != old:
            t.set_text(new)
    relayout = False
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None and legend.get_bbox_to_anchor() is not None and ax.get_xticks().size:
            handles, texts = legend.legend_handles, [x.get_text() for x in legend.get_texts()]
            if len(texts) >= 4 and not legend._bbox_to_anchor:  # inside the axes, many entries: beside it
                ax.legend(handles, texts, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                          frameon=False)
        # density panels (lines, no y ticks) without axis labels
        suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
        if (ax.lines and not ax.get_xlabel() and not ax.get_ylabel() and ax.get_xticks().size
                and not ax.get_yticks().size):
            ax.set_ylabel("density", fontsize="small")
            ax.set_xlabel("standardised value" if "standardised" in suptitle else "value", fontsize="small")
            relayout = True
        # a check's histogram panel ("skewness: p = 0.000") without axis labels
        m = re.match(r"^\s*([\w' ]+?)\s*:\s*p\s*=", ax.get_title())
        if m and not ax.get_xlabel() and any(True for _ in ax.patches):
            ax.set_xlabel(f"{m.group(1)} (bars: replicated data; line: observed)", fontsize="small")
            spec = ax.get_subplotspec()
            if not ax.get_ylabel() and (spec is None or spec.is_first_col()):
                ax.set_ylabel("replicated datasets", fontsize="small")
            relayout = True
    if relayout and fig.get_layout_engine() is None:  # room for the labels just added
        fig.tight_layout()


def _paper_markdown(title: str, frame: pd.DataFrame, note: str) -> str:
    cols = [str(c) for c in frame.columns]
    lines = [f"**{title}**", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, row in frame.iterrows():
        cells = [str(v).replace("*", r"\*") for v in row.tolist()]  # stars are emphasis in Markdown
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", note.replace("*", r"\*")])


def _stamp(fig: Any, banner: str) -> None:
    """The banner below everything the figure draws (axis labels included), never on top of them."""
    if not banner:
        return
    fig.canvas.draw()  # runs the layout engine first, so the box is where the axes will really be
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    height = fig.get_size_inches()[1]
    fig.text(0.5, (box.y0 - 0.08) / height, banner, ha="center", va="top", fontsize=8, color="#b00020")


def _html_table(cells: pd.DataFrame, show_index: bool, index_label: str, *, paper: bool = False) -> str:
    cls = "paper" if paper else "data sortable"
    head = (f"<th>{html.escape(index_label)}</th>" if show_index else "") + "".join(
        f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = []
    for label, row in cells.iterrows():
        first = f'<th scope="row">{html.escape(str(label))}</th>' if show_index else ""
        rows.append("<tr>" + first + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.tolist()) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows) + "\n</tbody></table>"


def _section_html(s: Section) -> str:
    out = [f'<section id="{s.id}"><h2>{html.escape(s.title)} <a class="top" href="#top">back to top</a></h2>']
    i = 0
    blocks = s.blocks
    while i < len(blocks):
        b = blocks[i]
        if b.group is None:
            out.append(b.html)
            i += 1
            continue
        gid = b.group
        inner = []
        while i < len(blocks) and blocks[i].group == gid:
            inner.append(blocks[i].html)
            i += 1
        flagged = any('class="flag"' in x for x in inner)
        badge = '<span class="badge bad">flagged</span>' if flagged else '<span class="badge ok">converged</span>'
        out.append(f'<details class="model" id="{gid}"><summary>{html.escape(s.groups.get(gid, gid))} '
                   f"<code>{gid}</code> {badge}</summary>" + "\n".join(inner) + "</details>")
    out.append("</section>")
    return "\n".join(out)


def _toc(sections: list[Section], *, forest: bool = True) -> str:
    items = []
    for s in sections:
        sub = []
        for b in s.blocks:
            if b.anchor and b.group is None:
                sub.append(f'<li><a href="#{b.anchor}">{html.escape(shorten(b.title, 60))}</a></li>')
        for gid, title in s.groups.items():
            # every table and figure of a model too, folded under the model's entry
            inner = "".join(f'<li><a href="#{b.anchor}">{html.escape(shorten(_after_title(b.title, title), 60))}</a></li>'
                            for b in s.blocks if b.anchor and b.group == gid)
            link = f'<a href="#{gid}">{html.escape(title)}</a>'
            sub.append(f"<li><details><summary>{link}</summary><ul>{inner}</ul></details></li>" if inner
                       else f"<li>{link}</li>")
        inner = f"<ul>{''.join(sub)}</ul>" if sub else ""
        items.append(f'<li><a href="#{s.id}">{html.escape(s.title)}</a>{inner}</li>')
    overview = ('<li><a href="#overview">Overview</a><ul><li><a href="#flags">Flags</a></li>'
                + ('<li><a href="#fig-forest_key_effect">The key effect in every model</a></li>' if forest else "")
                + "</ul></li>")
    return "<ol>" + overview + "".join(items) + "</ol>"


def _after_title(caption: str, title: str) -> str:
    """'<model title>: Posterior mean ...' -> 'Posterior mean ...' (the model is the entry above)."""
    return caption[len(title) + 2:] if caption.startswith(title + ": ") else caption


_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;line-height:1.45;font-size:15px}
.banner{position:sticky;top:0;background:#b00020;color:#fff;text-align:center;font-weight:700;padding:.3em;letter-spacing:.08em;z-index:5}
.layout{display:grid;grid-template-columns:250px minmax(0,1fr);gap:1.5em;max-width:1280px;margin:0 auto;padding:0 1em 3em}
nav.toc{position:sticky;top:2.2em;align-self:start;max-height:calc(100vh - 2.6em);overflow-y:auto;font-size:.8em;padding-top:1em}
nav.toc ol{padding-left:1.2em;margin:0} nav.toc ul{padding-left:1em;margin:.1em 0 .4em;list-style:none;color:#555}
nav.toc li{margin:.1em 0} nav.toc details>summary{cursor:pointer} nav.toc details ul{font-size:.95em} nav.toc a{color:#1f4f8a;text-decoration:none} nav.toc a:hover{text-decoration:underline}
main{min-width:0}
h1{margin:.5em 0 .2em;font-size:1.5em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em;font-size:1.25em}
h2 a.top{font-size:.6em;font-weight:400;float:right;color:#777}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0;max-width:100%}
td,th{padding:.18em .5em;border-bottom:1px solid #eee;text-align:right;vertical-align:top}
thead th{border-bottom:1.5px solid #999;position:relative} tbody th{text-align:left;font-weight:500}
table.data th:first-child,table.data td:first-child{text-align:left}
table.sortable thead th{cursor:pointer} table.sortable thead th:hover{background:#f2f6fb}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em} th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
.scroll{overflow-x:auto;max-width:100%}
figure{margin:1em 0;max-width:100%} figcaption{font-weight:600;margin:.3em 0} img{max-width:100%;height:auto;display:block}
.note{font-size:.82em;color:#555;max-width:60em} .files{font-size:.78em;color:#666;margin:.2em 0}
.skip{color:#666;font-style:italic;margin:.3em 0} .degenerate{color:#444;font-size:.9em}
.flag{color:#7a4100;background:#fff4e0;padding:.3em .6em;border-left:4px solid #e89b00;margin:.4em 0}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;font-size:.82em;color:#444;margin:.4em 0}
dl.meta dt{font-weight:600} dl.meta dd{margin:0}
details.model{border:1px solid #ddd;border-radius:4px;margin:.6em 0;padding:.2em .8em}
details.model>summary{cursor:pointer;font-weight:600;padding:.3em 0}
details.model[open]>summary{border-bottom:1px solid #eee;margin-bottom:.4em}
.badge{font-size:.75em;padding:.05em .5em;border-radius:3px;margin-left:.4em;font-weight:600}
.badge.ok{background:#e3f3e6;color:#1d6b2f} .badge.bad{background:#fde8d0;color:#8a4b00}
details.rows>summary,details.tall>summary{cursor:pointer;color:#1f4f8a;font-size:.9em}
#overview{border:2px solid #1f4f8a;border-radius:6px;padding:.6em 1em;margin:.6em 0 1em;background:#fbfcfe}
#overview h2{margin-top:.2em;border:none}
.verdict{font-size:1.08em;font-weight:600;margin:.3em 0 .6em}
.verdict.good{color:#1d6b2f} .verdict.warn{color:#8a4b00} .verdict.bad{color:#b00020}
.rollup{font-size:.92em;margin:.4em 0}
.flagbox{background:#fff4e0;border:1px solid #e8b36a;border-left:6px solid #e89b00;padding:.4em .8em;margin:.6em 0;font-size:.88em}
.flagbox.none{background:#eef7f0;border-color:#9ccaa6;border-left-color:#2e8b45}
.flagbox ul{margin:.2em 0;padding-left:1.2em} .flagbox .kind{font-weight:600;font-size:.9em;color:#8a4b00;margin-top:.3em}
.flagbox ul{max-height:16em;overflow-y:auto}
table.headline td,table.headline th{font-size:.95em} table.headline th:first-child{text-align:left}
"""

# Sortable tables and links into folded blocks; inline so the page works offline.
_SCRIPT = """
(function(){
 function val(t){var s=t.replace(/[\\[\\]()*,]/g,' ').trim().split(/\\s+/)[0];var x=parseFloat(s);return isNaN(x)?null:x;}
 document.querySelectorAll('table.sortable').forEach(function(tb){
  tb.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
   var body=tb.tBodies[0],rows=Array.from(body.rows),asc=th.getAttribute('aria-sort')!=='ascending';
   tb.querySelectorAll('thead th').forEach(function(h){h.removeAttribute('aria-sort');});
   th.setAttribute('aria-sort',asc?'ascending':'descending');
   rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent,vx=val(x),vy=val(y);
    var c=(vx!==null&&vy!==null)?vx-vy:x.localeCompare(y);return asc?c:-c;});
   rows.forEach(function(r){body.appendChild(r);});});});});
 function reveal(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;var el=document.getElementById(id);
  for(var p=el;p;p=p.parentElement){if(p.tagName==='DETAILS')p.open=true;} if(el)el.scrollIntoView();}
 window.addEventListener('hashchange',reveal);reveal();
})();
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ title }}</title><style>{{ style }}</style></head><body id="top">
{% if banner %}<div class="banner">{{ banner }} &mdash; not real statistics</div>{% endif %}
<div class="layout">
<nav class="toc" aria-label="contents"><strong>Contents</strong>{{ toc }}</nav>
<main>
<h1>{{ title }}</h1>
{{ overview }}
<details class="meta"><summary>Run details</summary>
<dl class="meta">{% for k, v in meta.items() %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}<dt>generated</dt><dd>{{ generated }}</dd></dl>
</details>
{{ body }}
{% if banner %}<div class="banner">{{ banner }}</div>{% endif %}
</main></div>
<script>{{ script }}</script>
</body></html>
"""
