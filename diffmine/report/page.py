"""The report kit: one stylesheet and one page layout for every HTML page diffmine writes.

    page(title, sections, summary=None, note=None, command=None) -> str

A page is a dark header (the command and the title), a sticky table of contents (one link per
section, when there are several), then an optional key/value summary and an explanatory note, then the sections,
each a card with an anchored heading. The helpers build the recurring pieces:

    kv_table(d) / facts(d)         an escaped key/value table / a wrapping row of key/value facts
    section(title, *body, ...)     a section with heading, anchor, optional summary and note
    thumbs(items) / figures(items) a row of small patch thumbnails / a grid of larger figures
    figure(src, caption, ...)      one picture with its caption (optionally a link)
    table(head, rows, cls=...)     a table of rows; Cell(content, cls) for a cell with a class
    columns(main, side)            two columns (main content, side panel)

Escaping: every helper escapes text it is given; markup passes through only as `Html` (what the
helpers return), so a label such as "<script>" is always shown as text. File references (src,
href) are quoted and relative to the page's folder; in-page links (the table of contents) are
written unquoted, with ids restricted to [A-Za-z0-9_.-], so that the quoted src/href attributes of
a page are exactly its file references.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Sequence

STYLE = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--card:#fff;--accent:#0969da;--good:#1a7f37}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#24292f;color:#fff;padding:14px 28px 12px}
header.top .brand{margin:0;font-size:12px;letter-spacing:.06em;color:#9da7b3}
header.top .brand b{color:#fff;letter-spacing:.08em}
header.top h1{margin:2px 0 0;font-size:22px;font-weight:600}
nav.toc{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:2px 16px;padding:6px 28px;
 background:#fff;border-bottom:1px solid var(--line);font-size:13px}
nav.toc:empty{display:none}
nav.toc a{color:var(--accent);text-decoration:none;white-space:nowrap} nav.toc a:hover{text-decoration:underline}
main{padding:12px 28px 32px;max-width:1500px}
a{color:var(--accent)}
dl.facts{display:flex;flex-wrap:wrap;gap:6px 28px;margin:12px 0 6px}
dl.facts>div{min-width:0;max-width:100%}
dl.facts dt{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
dl.facts dd{margin:0;font-weight:600;overflow-wrap:anywhere}
section>dl.facts{margin:6px 0 8px}
.scroll{overflow-x:auto;max-width:100%}
p.note{color:var(--muted);max-width:100ch;margin:10px 0 12px}
section{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 18px 14px;margin:14px 0;
 scroll-margin-top:40px}
section>h2{margin:0 0 6px;padding-bottom:6px;border-bottom:1px solid var(--line);font-size:17px;font-weight:600}
h3{margin:12px 0 4px;font-size:14px;font-weight:600}
table{border-collapse:collapse}
table.kv th,table.kv td{padding:1px 18px 1px 0;text-align:left;vertical-align:top;font-size:13px}
table.kv th{font-weight:500;color:var(--muted)}
table.data th,table.data td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
table.data th{background:var(--bg);font-weight:600;white-space:nowrap}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data tr.total td{font-weight:600;border-top:2px solid var(--line)}
table.seq th,table.seq td{padding:2px 4px;text-align:center;vertical-align:top;font-size:11px;color:var(--muted)}
table.seq th{color:var(--fg);font-size:12px}
table.seq td img{width:64px;height:64px;display:block;border:2px solid #ddd}
table.seq td.src img{border-color:var(--good)}
table.seq td.info{text-align:left;white-space:nowrap;padding-right:10px}
img{image-rendering:pixelated}
a img{cursor:zoom-in}
figure{margin:0}
figcaption{font-size:12px;color:var(--muted);margin-top:3px}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;margin:6px 0}
.figs figure{max-width:100%}
.figs img{display:block;max-width:100%;border:1px solid var(--line)}
.figs.m img{width:384px} .figs.m figcaption{max-width:384px}
.thumbs{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start;margin:4px 0 10px}
.thumbs figure{text-align:center}
.thumbs img{width:72px;height:72px;display:block;border:1px solid #bbb}
.thumbs figcaption{margin:0;font-size:11px}
.cols{display:flex;flex-wrap:wrap;gap:28px} .cols>.main{flex:3 1 560px;min-width:0} .cols>.side{flex:1 1 240px;min-width:0}
.side h3:first-child{margin-top:4px}
.empty{color:var(--muted);font-style:italic}
footer{padding:0 28px 24px;color:var(--muted);font-size:12px}
""".strip()


class Html(str):
    """Markup that is already safe: passed through by `esc` and the helpers unescaped."""


def esc(x) -> Html:
    """x as HTML text (escaped, quotes included), or x itself when it is already `Html`."""
    return x if isinstance(x, Html) else Html(html.escape(str(x), quote=True))


def join(parts: Iterable) -> Html:
    return Html("".join(esc(p) for p in parts))


def anchor(text) -> str:
    """An id made of [A-Za-z0-9_.-] only (safe as an unquoted attribute value)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.") or "s"


def tag(name: str, content="", cls: str | None = None, **attrs) -> Html:
    """<name class='cls' attr='value'>content</name>; attribute values and text escaped."""
    a = "".join(f" {k.rstrip('_')}='{esc(v)}'" for k, v in ([("class", cls)] if cls else []) + list(attrs.items())
                if v is not None)
    return Html(f"<{name}{a}>{esc(content)}</{name}>")


def para(text, cls: str = "note") -> Html:
    return tag("p", text, cls=cls)


def heading(text, level: int = 3) -> Html:
    return tag(f"h{level}", text)


def kv_table(d: Mapping | None) -> Html:
    """An escaped key/value table ('' when there is nothing to show)."""
    if not d:
        return Html("")
    return Html("<table class='kv'>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                               for k, v in d.items()) + "</table>")


def facts(d: Mapping | None) -> Html:
    """A compact, wrapping row of escaped key/value facts ('' when there is nothing to show)."""
    if not d:
        return Html("")
    return Html("<dl class='facts'>" + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>"
                                               for k, v in d.items()) + "</dl>")


class Cell(NamedTuple):
    """A table cell with a class (e.g. 'num' for right-aligned numbers)."""
    content: object
    cls: str | None = None


def _cell(c, name: str) -> str:
    if isinstance(c, Cell):
        return tag(name, c.content, cls=c.cls)
    return f"<{name}>{esc(c)}</{name}>"


def table(head: Sequence, rows: Iterable[Sequence], cls: str = "data", row_cls: Sequence | None = None) -> Html:
    """A table: `head` a sequence of header cells, `rows` sequences of cells (text, Html or Cell)."""
    rows = list(rows)
    body = "".join((f"<tr class='{esc(row_cls[i])}'>" if row_cls and row_cls[i] else "<tr>")
                   + "".join(_cell(c, "td") for c in r) + "</tr>" for i, r in enumerate(rows))
    top = "<thead><tr>" + "".join(_cell(c, "th") for c in head) + "</tr></thead>" if head else ""
    return Html(f"<div class='scroll'><table class='{esc(cls)}'>{top}<tbody>{body}</tbody></table></div>")


def img(src: str, alt="", title=None, href: str | None = None, lazy: bool = False) -> Html:
    """A picture (src relative to the page), linked to `href` when given."""
    out = Html(f"<img src='{esc(src)}' alt='{esc(alt)}'" + (f" title='{esc(title)}'" if title else "")
               + (" loading='lazy'" if lazy else "") + ">")
    return Html(f"<a href='{esc(href)}'>{out}</a>") if href else out


def figure(src: str, caption="", alt=None, title=None, href: str | None = None, lazy: bool = False) -> Html:
    """A picture with its caption under it."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption != "" else ""
    return Html(f"<figure>{img(src, caption if alt is None else alt, title, href, lazy)}{cap}</figure>")


def figures(items: Iterable, size: str | None = None) -> Html:
    """A wrapping grid of figures; size 'm' draws every picture 384 px wide, None at its own size."""
    return Html(f"<div class='figs{' ' + size if size else ''}'>{join(items)}</div>")


def thumbs(items: Iterable) -> Html:
    """A row of small (72 px) patch thumbnails."""
    return Html(f"<div class='thumbs'>{join(items)}</div>")


def columns(main, side) -> Html:
    return Html(f"<div class='cols'><div class='main'>{esc(main)}</div><aside class='side'>{esc(side)}</aside></div>")


def empty(text) -> Html:
    return tag("p", text, cls="empty")


@dataclass
class Section:
    title: str
    body: list = field(default_factory=list)
    anchor: str | None = None
    summary: Mapping | None = None
    note: str | None = None
    toc: str | None = None


def section(title, *body, anchor: str | None = None, summary: Mapping | None = None, note=None,
            toc: str | None = None) -> Section:
    """A section of a page: heading `title` (linked from the table of contents by `toc`, the title
    when not given), optional key/value facts and a note, then the body pieces."""
    return Section(str(title), list(body), anchor, summary, note, toc)


def _render_section(s: Section, sid: str) -> str:
    parts = [f"<section id='{sid}'><h2>{esc(s.title)}</h2>"]
    if s.summary:
        parts.append(facts(s.summary))
    if s.note:
        parts.append(para(s.note))
    parts += [esc(b) for b in s.body]
    parts.append("</section>")
    return "".join(parts)


def page(title, sections: Sequence[Section], summary: Mapping | None = None, note=None,
         command: str | None = None, intro: Sequence = ()) -> str:
    """The whole page: header, table of contents, summary table, note, `intro` pieces, sections."""
    ids, used = [], set()
    for s in sections:
        base = anchor(s.anchor or s.title)
        sid, n = base, 2
        while sid in used:
            sid, n = f"{base}-{n}", n + 1
        used.add(sid)
        ids.append(sid)
    toc = "".join(f"<a href='#{sid}'>{esc(s.toc or s.title)}</a>" for s, sid in zip(sections, ids)) if len(sections) > 1 else ""
    brand = "<b>DIFFMINE</b>" + (f" &middot; {esc(command)}" if command else "")
    parts = ["<!DOCTYPE html>",
             f"<html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width,"
             f"initial-scale=1'><title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<header class='top'><p class='brand'>{brand}</p><h1>{esc(title)}</h1></header>",
             f"<nav class='toc'>{toc}</nav>", "<main>"]
    if summary:
        parts.append(facts(summary))
    if note:
        parts.append(para(note))
    parts += [esc(p) for p in intro]
    parts += [_render_section(s, sid) for s, sid in zip(sections, ids)]
    parts.append("</main><footer>Written by diffmine. Pictures and files are referenced relative to this "
                 "page's folder, which can be moved or zipped as a whole.</footer></body></html>")
    return "\n".join(parts)
