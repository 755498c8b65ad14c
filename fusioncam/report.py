"""A gallery of a run's outputs: one self-contained `index.html` over every JSON record the writers left.

The page has to work where the outputs are looked at: opened from disk on a machine with no network, possibly
copied elsewhere, possibly over ten thousand records. So it carries its own CSS and JS (no CDN), links every file
by a percent-encoded path relative to the folder (records are found by their own location, not by the possibly
absolute paths they were written with), and shows small JPEG thumbnails kept in `.thumbs/` rather than inline
data or full-size overlays, so the HTML stays small and the browser decodes little. Every text from a record is
user input and is HTML-escaped; a Content-Security-Policy that admits only the page's own script and local images
backs that up. Without JS the page is a static list in name order; with JS it sorts by ITM score or name and
filters by text, reading and writing its state in the URL fragment (`#sort=itm-desc&q=dog`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path, PurePath
from urllib.parse import quote

import cv2
import numpy as np

from fusioncam.files import atomically

INDEX_NAME = "index.html"
THUMB_DIR = ".thumbs"
THUMB_BOX = (240, 180)  # width, height: thumbnails fit inside and are shown at their own size
_JPEG_QUALITY = 82
_MAX_RECORD_BYTES = 64 << 20  # a record is kilobytes; a huge JSON someone left in the folder is not read
_MAX_CAPTIONS = 10  # per VQA card, those with the strongest contributions
_EAGER_CARDS = 12  # about a screenful loads at once, the rest as it scrolls into view (10 000 cards: 10 000 images)

# Links of a card, in this order; output kinds a future writer adds are linked too, under their own key.
_LINKS = {
    "overlay": "overlay",
    "words": "per-word sheet",
    "segment": "segment overlay",
    "mask": "mask",
    "cutout": "cutout",
    "answer_overlay": "answer map",
    "heatmap": "raw map (.npy)",
    "word_maps": "raw word maps (.npy)",
    "answer_map": "raw answer map (.npy)",
}
_PREVIEW_KINDS = ("overlay", "segment", "answer_overlay", "words", "mask", "cutout")


@dataclass(frozen=True)
class Skipped:
    """A `.json` file under the folder that could not be read as a record, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ReportSummary:
    """What `write_report` did: the page it wrote, how many records it shows, the files it had to leave out."""

    path: Path
    records: int
    skipped: list[Skipped]


@dataclass(frozen=True)
class _Record:
    path: Path  # the JSON file, under the report folder
    data: dict
    outputs: dict[str, Path]  # the output files that exist, by kind (the record itself left out)
    missing: list[str]  # kinds of outputs the record names but that are not there

    @property
    def previews(self) -> list[Path]:
        """The images a card shows small: the first overlay-like output, and a VQA record's answer map."""
        first = next((self.outputs[kind] for kind in _PREVIEW_KINDS if kind in self.outputs), None)
        answer = self.outputs.get("answer_overlay") if "question" in self.data else None
        return [path for path in (first, answer) if path is not None]


def _find_records(out_dir: Path) -> tuple[list[_Record], list[Skipped]]:
    """Every JSON record under `out_dir` (a JSON object with an `outputs` object), in path order.

    Other valid JSON (a summary, a config) is not a record and is passed over silently; a file that is not valid
    JSON, or a record whose `outputs` is not an object, is returned as skipped. Hidden folders (`.thumbs`,
    `.git`, notebook checkpoints) are not searched.
    """
    records: list[_Record] = []
    skipped: list[Skipped] = []
    for folder, subfolders, files in os.walk(out_dir):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            path = Path(folder) / name
            try:
                if path.stat().st_size > _MAX_RECORD_BYTES:
                    skipped.append(Skipped(path, f"larger than {_MAX_RECORD_BYTES >> 20} MiB: not a record"))
                    continue
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as error:
                skipped.append(Skipped(path, f"unreadable: {error}"))
                continue
            except json.JSONDecodeError as error:
                skipped.append(Skipped(path, f"not JSON: {error.msg} (line {error.lineno}, column {error.colno})"))
                continue
            if not isinstance(data, dict) or "outputs" not in data:
                continue
            if not isinstance(data["outputs"], dict):
                skipped.append(Skipped(path, '"outputs" is not an object of paths'))
                continue
            outputs = {kind: _output(path, value) for kind, value in data["outputs"].items() if kind != "json"}
            existing = {kind: output for kind, output in outputs.items() if output is not None}
            records.append(_Record(path, data, existing, [kind for kind in outputs if kind not in existing]))
    return records, skipped


def write_report(out_dir: Path, title: str | None = None) -> ReportSummary:
    """Write `out_dir/index.html` (and thumbnails in `out_dir/.thumbs/`) over the records found under `out_dir`.

    Thumbnails are made only for overlays newer than their thumbnail, so rerunning after adding records is cheap;
    thumbnails no card uses any more are deleted. The page is written to a temporary file and moved into place,
    so a browser never sees half a page.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is not a folder")
    records, skipped = _find_records(out_dir)
    records.sort(key=lambda record: _sort_key(out_dir, record))
    thumbs = _thumbnails(out_dir, [source for record in records for source in record.previews])
    cards = [_card(out_dir, record, rank, thumbs) for rank, record in enumerate(records)]
    _prune_thumbnails(out_dir, set(thumbs.values()))
    heading = title if title is not None else f"fusioncam report: {out_dir.resolve().name}"
    page = _page(heading, cards, [_skipped_line(out_dir, item) for item in skipped])
    index = out_dir / INDEX_NAME
    _write_bytes(index, page.encode("utf-8"))
    return ReportSummary(index, len(records), skipped)


def _sort_key(out_dir: Path, record: _Record) -> tuple[str, str, str]:
    return (_image_name(record).casefold(), _text(record).casefold(), record.path.relative_to(out_dir).as_posix())


def _image_name(record: _Record) -> str:
    image = record.data.get("image")
    return PurePath(image).name if isinstance(image, str) and image else record.path.stem


def _is_vqa(record: _Record) -> bool:
    return "question" in record.data


def _text(record: _Record) -> str:
    return _string(record.data.get("question" if _is_vqa(record) else "text"))


def _string(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _number(value: object) -> float | None:
    """A finite score, or None: records are read back from disk and may hold anything."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _url(out_dir: Path, path: Path) -> str:
    """`path` relative to the page, percent-encoded (spaces, `#`, `?`, `:`, non-ASCII as UTF-8)."""
    return quote(path.relative_to(out_dir).as_posix())


def _output(record_path: Path, value: object) -> Path | None:
    """An output file of a record, looked up beside the record itself: the writers put all of a pair's files in
    one folder, and the recorded path may be absolute or relative to wherever the run was started."""
    if not isinstance(value, str) or not value:
        return None
    candidate = record_path.parent / PurePath(value).name
    return candidate if candidate.is_file() else None


def _thumbnail_path(out_dir: Path, source: Path) -> Path:
    relative = source.relative_to(out_dir)
    return out_dir / THUMB_DIR / relative.parent / (relative.name + ".jpg")


def _thumbnails(out_dir: Path, sources: list[Path]) -> dict[Path, Path]:
    """Thumbnails of `sources` (those that are decodable images), made in parallel where missing or older than
    their source: decoding a full-size PNG is most of the work and OpenCV releases the GIL while it decodes."""
    unique = list(dict.fromkeys(sources))  # two records naming one file must not write its thumbnail at once
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        made = pool.map(lambda source: _thumbnail(source, _thumbnail_path(out_dir, source)), unique)
        return {source: thumb for source, thumb in zip(unique, made, strict=True) if thumb is not None}


def _thumbnail(source: Path, thumb: Path) -> Path | None:
    try:
        if thumb.is_file() and thumb.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            return thumb
        pixels = cv2.imdecode(np.frombuffer(source.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            return None
        height, width = pixels.shape[:2]
        scale = min(THUMB_BOX[0] / width, THUMB_BOX[1] / height, 1.0)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            return None
        thumb.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(thumb, encoded.tobytes())
    except OSError:
        return None
    return thumb


def _prune_thumbnails(out_dir: Path, keep: set[Path]) -> None:
    """Delete what no card shows any more from `.thumbs/` (thumbnails of a rerun with other texts or of deleted
    records, the partial file of an interrupted run): the folder is the report's own."""
    for path in (out_dir / THUMB_DIR).rglob("*"):
        if path.is_file() and path not in keep:
            path.unlink(missing_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomically(path) as temporary:
        temporary.write_bytes(data)


def _card(out_dir: Path, record: _Record, rank: int, thumbs: dict[Path, Path]) -> str:
    """One record as a list item. Its data attributes are what the script sorts and filters by, so the page's
    state lives in the markup and the static list is already the whole page."""
    data, outputs = record.data, record.outputs
    vqa = _is_vqa(record)
    name, text = _image_name(record), _text(record)
    answer = _string(data.get("answer")) if vqa else ""
    itm, itc = _number(data.get("itm_score")), _number(data.get("itc_score"))
    loading = "eager" if rank < _EAGER_CARDS else "lazy"

    preview = next((kind for kind in _PREVIEW_KINDS if outputs.get(kind) in thumbs), None)
    if preview:
        picture = (
            f'<a class="thumb" href="{escape(_url(out_dir, outputs[preview]))}">'
            f'<img src="{escape(_url(out_dir, thumbs[outputs[preview]]))}"'
            f' alt="{escape(_LINKS.get(preview, preview))} of {escape(name)}" loading="{loading}" decoding="async"></a>'
        )
    else:
        picture = '<div class="thumb none">no preview</div>'

    parts = [
        f'<li class="card{" vqa" if vqa else ""}" data-rank="{rank}" data-itm="{"" if itm is None else repr(itm)}"'
        f' data-search="{escape(" ".join(filter(None, (text, answer, name))).lower())}">',
        picture,
        f'<h2 title="{escape(record.path.relative_to(out_dir).as_posix())}">{escape(name)}</h2>',
        f'<p class="text">{escape(text)}</p>',
    ]
    if vqa:
        parts.append(f'<p class="answer">{escape(answer)}</p>')
    scores = [f'ITM <b class="itm">{itm:.4f}</b>'] if itm is not None else []
    scores += [f"ITC {itc:.4f}"] if itc is not None else []
    if scores:
        parts.append(f'<p class="scores">{" · ".join(scores)}</p>')
    parts.append(f'<p class="meta">{escape(_meta(record))}</p>')
    if vqa:
        parts.append(_answer_map(out_dir, outputs, thumbs, loading))
        parts.append(_captions(data.get("captions")))
    links = [
        f'<a href="{escape(_url(out_dir, outputs[kind]))}">{escape(_LINKS.get(kind, kind))}</a>'
        for kind in [*(kind for kind in _LINKS if kind in outputs), *(kind for kind in outputs if kind not in _LINKS)]
    ]
    links.append(f'<a href="{escape(_url(out_dir, record.path))}">record (.json)</a>')
    if record.missing:
        links.append(f'<span class="missing">missing: {escape(", ".join(record.missing))}</span>')
    parts.append(f'<nav class="links">{" ".join(links)}</nav>')
    parts.append("</li>")
    return "\n".join(parts)


def _meta(record: _Record) -> str:
    data = record.data
    kind = "vqa" if _is_vqa(record) else "segment" if "segment" in data["outputs"] else "heatmap"
    details = [kind]
    if isinstance(data.get("model"), str):
        details.append(data["model"])
    if isinstance(data.get("block"), int):
        details.append(f"block {data['block']}")
    if isinstance(data.get("encoder"), str) and data["encoder"] != "blip":
        details.append(data["encoder"])
    return " · ".join(details)


def _answer_map(out_dir: Path, outputs: dict[str, Path], thumbs: dict[Path, Path], loading: str) -> str:
    source = outputs.get("answer_overlay")
    if source not in thumbs:
        return ""
    return (
        f'<figure class="answer-map"><a href="{escape(_url(out_dir, source))}">'
        f'<img src="{escape(_url(out_dir, thumbs[source]))}" alt="answer map" loading="{loading}" decoding="async">'
        "</a><figcaption>answer map</figcaption></figure>"
    )


def _bar_widths(contributions: list[float | None]) -> list[float | None]:
    """Bar lengths in percent of half the track, |contribution| / max |contribution| so the strongest caption
    spans it whatever the scale; an infinite contribution (the answer impossible without the caption) spans it too
    without flattening the others, NaN or a missing one gets no bar, and all-zero contributions get empty bars."""
    finite = [abs(value) for value in contributions if value is not None and math.isfinite(value)]
    largest = max(finite, default=0.0)
    widths: list[float | None] = []
    for value in contributions:
        if value is None or math.isnan(value):
            widths.append(None)
        elif math.isinf(value):
            widths.append(100.0)
        else:
            widths.append(100.0 * abs(value) / largest if largest > 0 else 0.0)
    return widths


def _captions(captions: object) -> str:
    """The captions with the strongest contributions to the answer, most for it first, each with a bar: right and
    blue for, left and red against. A VQA record holds 100 captions by default; all of them on every card would
    make a 10 000-record page hundreds of megabytes, and the record's JSON, linked from the card, has them all."""
    if not isinstance(captions, list) or not captions:
        return ""
    items = [item for item in captions if isinstance(item, dict)]
    contributions = [_contribution(item.get("contribution")) for item in items]
    rows = list(zip(items, contributions, _bar_widths(contributions), strict=True))
    rows = sorted(rows, key=lambda row: _strength(row[1]), reverse=True)[:_MAX_CAPTIONS]
    rows.sort(key=lambda row: _order(row[1]))
    lines = []
    for item, value, width in rows:
        caption = f'<span class="caption">{escape(_string(item.get("caption")))}</span>'
        if value is None or width is None:
            lines.append(f'<li><span class="track"></span><span class="value">n/a</span>{caption}</li>')
            continue
        sign = "pos" if value > 0 else "neg" if value < 0 else "zero"
        bar = f'<span class="bar {sign}" style="width:{width:.2f}%"></span>'
        left, right = (bar, "") if sign == "neg" else ("", bar)
        track = f'<span class="track"><span class="half">{left}</span><span class="half">{right}</span></span>'
        lines.append(f'<li data-contribution="{value!r}">{track}<span class="value">{value:+.3f}</span>{caption}</li>')
    summary = (
        f"{len(items)} captions: their contribution to the answer"
        if len(lines) == len(items)
        else f"{len(lines)} of {len(items)} captions: the strongest contributions to the answer"
    )
    return f'<details class="captions" open><summary>{summary}</summary><ol>{"".join(lines)}</ol></details>'


def _strength(value: float | None) -> float:
    """How much a contribution says, for choosing the captions to show: |value|, below zero when there is none."""
    return -1.0 if value is None or math.isnan(value) else abs(value)


def _order(value: float | None) -> tuple[int, float]:
    """Sort key for the captions shown: those with a contribution first, most for the answer first; the others last."""
    return (1, 0.0) if value is None or math.isnan(value) else (0, -value)


def _contribution(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _skipped_line(out_dir: Path, item: Skipped) -> str:
    return f"<li><code>{escape(item.path.relative_to(out_dir).as_posix())}</code>: {escape(item.reason)}</li>"


_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#f4f4f4;color:#222}
header{padding:12px 16px;background:#222;color:#eee}
header h1{margin:0 0 6px;font-size:18px}
#controls{display:flex;gap:12px;align-items:center;margin-top:6px}
#controls input{width:260px;padding:4px}
[hidden]{display:none!important}
.skipped{margin:12px 16px;padding:8px 12px;background:#fff4e5;border:1px solid #e0b070}
.skipped h2{margin:0;font-size:14px}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(264px,1fr));gap:12px;padding:12px 16px;
 list-style:none;margin:0}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:12px;overflow-wrap:anywhere}
.thumb{display:flex;align-items:center;justify-content:center;width:240px;height:180px;background:#333}
.thumb img{max-width:240px;max-height:180px;object-fit:scale-down}
.thumb.none{color:#aaa}
.card h2{font-size:14px;margin:8px 0 2px}
.card p{margin:2px 0}
.vqa .text::before{content:"Q ";font-weight:bold}
.vqa .answer::before{content:"A ";font-weight:bold}
.meta{color:#777;font-size:12px}
.answer-map{margin:6px 0}
.answer-map img{max-width:120px;max-height:90px}
.answer-map figcaption{font-size:12px;color:#777}
.captions ol{padding:0;margin:4px 0;list-style:none;font-size:12px}
.captions li{display:grid;grid-template-columns:100px 48px 1fr;gap:6px;align-items:center}
.track{display:flex;height:10px;background:#eee}
.half{flex:1;display:flex}
.half:first-child{justify-content:flex-end;border-right:1px solid #999}
.bar{display:block;height:100%}
.bar.pos{background:#2e6fd8}
.bar.neg{background:#d8402e}
.value{text-align:right;font-variant-numeric:tabular-nums}
.links{margin-top:6px;font-size:12px;display:flex;flex-wrap:wrap;gap:4px 10px}
.missing{color:#a33}
"""

# Sorting keeps each card's server-side rank as the tie-breaker (and as the name order), so Python decides what
# "name order" means and the browser's locale cannot reorder it.
_SCRIPT = """
(() => {
  const list = document.getElementById("cards");
  const cards = Array.from(list.children);
  const sort = document.getElementById("sort");
  const query = document.getElementById("q");
  const shown = document.getElementById("shown");
  const rank = (card) => Number(card.dataset.rank);
  const itm = (card) => (card.dataset.itm === "" ? null : Number(card.dataset.itm));
  const byScore = (sign) => (a, b) => {
    const x = itm(a), y = itm(b);
    if (x === null || y === null) return (x === null) - (y === null) || rank(a) - rank(b);
    return sign * (x - y) || rank(a) - rank(b);
  };
  const orders = {
    "name": (a, b) => rank(a) - rank(b),
    "name-desc": (a, b) => rank(b) - rank(a),
    "itm-desc": byScore(-1),
    "itm-asc": byScore(1),
  };
  function apply() {
    const terms = query.value.toLowerCase().split(/\\s+/).filter(Boolean);
    const sorted = cards.slice().sort(orders[sort.value] || orders.name);
    const fragment = document.createDocumentFragment();
    let count = 0;
    for (const card of sorted) {
      const hit = terms.every((term) => card.dataset.search.includes(term));
      card.hidden = !hit;
      count += hit;
      fragment.appendChild(card);
    }
    list.appendChild(fragment);
    shown.textContent = count;
    const state = new URLSearchParams();
    if (sort.value !== "name") state.set("sort", sort.value);
    if (query.value) state.set("q", query.value);
    const hash = state.toString();
    if (hash !== location.hash.slice(1)) history.replaceState(null, "", hash ? "#" + hash : location.pathname);
  }
  function load() {
    const state = new URLSearchParams(location.search);
    for (const [key, value] of new URLSearchParams(location.hash.slice(1))) state.set(key, value);
    sort.value = orders[state.get("sort")] ? state.get("sort") : "name";
    query.value = state.get("q") || "";
    apply();
  }
  sort.addEventListener("change", apply);
  query.addEventListener("input", apply);
  window.addEventListener("hashchange", load);
  document.getElementById("controls").hidden = false;
  load();
})();
"""


def _page(title: str, cards: list[str], skipped: list[str]) -> str:
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    policy = (
        "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    total = len(cards)
    skipped_note = (
        f'<section class="skipped"><h2>Skipped {len(skipped)} file{"s" if len(skipped) != 1 else ""}</h2>'
        f"<ul>{''.join(skipped)}</ul></section>"
        if skipped
        else ""
    )
    body = "\n".join(cards)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(policy)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>{escape(title)}</h1>
<p id="count"><span id="shown">{total}</span> of {total} record{"s" if total != 1 else ""}</p>
<div id="controls" hidden>
<label>Sort <select id="sort">
<option value="name">name (A→Z)</option>
<option value="name-desc">name (Z→A)</option>
<option value="itm-desc">ITM score (high→low)</option>
<option value="itm-asc">ITM score (low→high)</option>
</select></label>
<label>Filter <input id="q" type="search" placeholder="words of the text, answer or image name"></label>
</div>
<noscript><p>Sorting and filtering need JavaScript; this is the list in name order.</p></noscript>
</header>
{skipped_note}
<ol id="cards">
{body}
</ol>
<script>{_SCRIPT}</script>
</body>
</html>
"""
