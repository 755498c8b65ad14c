"""The HTML gallery over a run's outputs, on a folder the real CLI filled with tiny random-weight models.

The page is checked twice: as markup (parsed with `html.parser`: cards against their JSON records, links,
escaping, caption bars) and as a page in a real headless Chromium (thumbnails load, the sort/filter script runs,
the static list works without JS). Chromium is part of the test setup (`apt-get install -y chromium`); a missing
browser fails the test rather than skipping it, so a CI that lost it does not pass silently. Set
`FUSIONCAM_CHROMIUM` to a Chrome/Chromium binary to use another one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import cv2
import numpy as np
import pytest
import torch
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

from fusioncam.cli import app
from fusioncam.explain.render import save_png
from fusioncam.inputs import Pair
from fusioncam.outputs import write_vqa
from fusioncam.report import THUMB_BOX, THUMB_DIR, ReportSummary, write_report
from fusioncam.vqa import Evidence, VQAResult

HOSTILE = "<script>alert(1)</script>"
ODD_IMAGE = "chien été 1.png"  # a space and non-ASCII letters in the file names the page links to
SYNTHETIC_CONTRIBUTIONS = [2.0, -1.0, 0.0, None]  # for, against, neither, not measured


def cli(*args: object) -> None:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, dogs_jpg: Path) -> Path:
    """A run's output folder as the CLI leaves it, plus what real folders also hold.

    Heatmaps of the photo with per-word sheets (one text is a script tag), a heatmap of an image whose name has a
    space and non-ASCII letters (in a subfolder whose name has a space, its raw map deleted afterwards), a
    segmentation, a VQA answer, a VQA record written by `write_vqa` with chosen contributions (for, against,
    zero, unmeasured), a summary JSON that is not a record, and a truncated JSON.
    """
    presets = write_tiny_presets(tmp_path_factory.mktemp("presets"))
    out = tmp_path_factory.mktemp("run") / "out"
    itm = ["--model", presets["itm"], "--block", "1"]
    cli("heatmap", dogs_jpg, "two dogs on the beach", HOSTILE, "a red ball", "--per-word", "--out", out, *itm)

    images = tmp_path_factory.mktemp("images")
    gradient = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3))
    save_png(images / ODD_IMAGE, gradient)
    cli("heatmap", images / ODD_IMAGE, "a small dog", "--out", out / "nested dir", *itm)
    (odd_record,) = (path for path in (out / "nested dir").glob("*.json") if path.name != "summary.json")
    Path(json.loads(odd_record.read_text())["outputs"]["heatmap"]).unlink()

    cli("segment", dogs_jpg, "the stick", "--sam-model", presets["sam"], "--out", out, *itm)
    vqa = ["--caption-model", presets["caption"], "--qa-model", presets["qa"], "--num-captions", "3"]
    vqa += ["--caption-min-length", "6", "--caption-max-length", "10"]
    cli("vqa", dogs_jpg, "what is the dog holding?", "--out", out / "vqa", *itm, *vqa)

    rng = np.random.default_rng(0)
    result = VQAResult(
        question="which <b>dog</b> & why?",
        answer="the <i>left</i> one",
        heatmap=torch.from_numpy(rng.random((24, 24), dtype=np.float32)),
        answer_map=torch.from_numpy(rng.random((24, 24), dtype=np.float32)),
        evidence=[
            Evidence(f"caption {index}", [index], contribution)
            for index, contribution in enumerate(SYNTHETIC_CONTRIBUTIONS)
        ],
    )
    pair = Pair(images / ODD_IMAGE, result.question, "test", Path("synthetic"))
    write_vqa(out / "vqa", pair, gradient, result, {"itm": "tiny-itm"})

    (out / "summary.json").write_text(json.dumps({"records": 7, "failed": 0}))
    (out / "broken.json").write_text('{"image": "x.png", "outputs": {"overlay": "x.overl')
    return out


def record_of(out: Path, text: str) -> tuple[Path, dict]:
    """The record of a text (or question), found by content: output file names are the writers' business."""
    (found,) = [
        (path, record)
        for path, record in records_of(out).items()
        if text in (record.get("text"), record.get("question"))
    ]
    return found


def records_of(out: Path) -> dict[Path, dict]:
    """The records the writers left, by path: what the page must show."""
    records = {}
    for path in out.rglob("*.json"):
        if path.name not in ("summary.json", "broken.json"):
            records[path] = json.loads(path.read_text())
    return records


class Page(HTMLParser):
    """What the tests check of a page: its cards (attributes, texts by class, links, caption bars), every URL,
    the skipped-files note and the scripts."""

    VOID = frozenset({"img", "input", "meta", "br", "link"})  # elements without an end tag

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.urls: list[str] = []
        self.skipped: list[str] = []
        self.scripts = 0
        self.controls_hidden: bool | None = None
        self._open: list[set[str]] = []  # classes of the open elements
        self._card: dict | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        classes = set(attributes.get("class", "").split())
        self.scripts += tag == "script"
        if attributes.get("id") == "controls":
            self.controls_hidden = "hidden" in attributes
        for key in ("src", "href"):
            if key in attributes:
                self.urls.append(attributes[key])
                if self._card is not None:
                    self._card[key + "s"].append(attributes[key])
        if "card" in classes:
            self._card = {"attrs": attributes, "texts": {}, "srcs": [], "hrefs": [], "captions": []}
            self.cards.append(self._card)
        if self._card is not None and tag == "li" and "card" not in classes:
            self._card["captions"].append({"contribution": attributes.get("data-contribution"), "bar": None})
        if "bar" in classes:
            (sign,) = classes - {"bar"}
            width = attributes["style"].removeprefix("width:").removesuffix("%")
            self._card["captions"][-1]["bar"] = (sign, float(width))
        if tag == "li" and self._in("skipped"):
            self.skipped.append("")
            classes.add("skipped-item")
        if tag not in self.VOID:
            self._open.append(classes)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if "card" in self._open.pop():
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._in("skipped-item"):
            self.skipped[-1] += data
        if self._card is None:
            return
        for classes in self._open:
            for name in classes:
                self._card["texts"][name] = self._card["texts"].get(name, "") + data
        if self._in("caption"):
            caption = self._card["captions"][-1]
            caption["text"] = caption.get("text", "") + data

    def _in(self, name: str) -> bool:
        return any(name in classes for classes in self._open)

    def card_of(self, out: Path, record_path: Path) -> dict:
        """The card that links `record_path` as its record."""
        url = record_path.relative_to(out).as_posix()
        (card,) = [card for card in self.cards if url in map(unquote, card["hrefs"])]
        return card

    def visible(self) -> list[dict]:
        return [card for card in self.cards if "hidden" not in card["attrs"]]


@pytest.fixture(scope="module")
def report(run_dir: Path) -> tuple[ReportSummary, str, Page]:
    summary = write_report(run_dir)
    markup = summary.path.read_text(encoding="utf-8")
    return summary, markup, Page(markup)


def test_one_card_per_record_with_its_text_and_scores(run_dir: Path, report) -> None:
    summary, _, page = report
    records = records_of(run_dir)
    assert summary.records == len(records) == len(page.cards) == 7  # 4 heatmaps, 1 segmentation, 2 VQA records
    for path, record in records.items():
        card = page.card_of(run_dir, path)
        texts = card["texts"]
        kind = "vqa" if "question" in record else "segment" if "segment" in record["outputs"] else "heatmap"
        assert texts["meta"].split(" · ")[0] == kind
        assert texts["text"] == record.get("question", record.get("text"))
        searchable = [texts["text"], record.get("answer", ""), Path(record["image"]).name]
        assert card["attrs"]["data-search"] == " ".join(filter(None, searchable)).lower()
        if "question" in record:
            assert (
                texts.get("answer", "") == record["answer"] and "itm" not in texts and card["attrs"]["data-itm"] == ""
            )
        else:
            assert float(card["attrs"]["data-itm"]) == record["itm_score"]  # exactly: the page sorts by it
            assert texts["itm"] == f"{record['itm_score']:.4f}"
            assert f"ITC {record['itc_score']:.4f}" in texts["scores"]


def test_every_link_is_a_relative_url_to_a_file_of_the_run(run_dir: Path, report) -> None:
    _, markup, page = report
    root = run_dir.resolve()
    assert page.urls
    for url in page.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
        target = (run_dir / unquote(parts.path)).resolve()
        assert target.is_file() and target.is_relative_to(root), url
    assert "http" not in markup.replace('http-equiv="Content-Security-Policy"', "")
    assert str(run_dir) not in markup

    for path, record in records_of(run_dir).items():
        hrefs = {unquote(url) for url in page.card_of(run_dir, path)["hrefs"]}
        written = [Path(value) for value in record["outputs"].values()]
        assert {path.relative_to(run_dir).as_posix() for path in written if path.is_file()} <= hrefs

    path, record = record_of(run_dir, "a small dog")
    odd = page.card_of(run_dir, path)
    overlay = quote(Path(record["outputs"]["overlay"]).relative_to(run_dir).as_posix())
    assert overlay in odd["hrefs"] and overlay.startswith("nested%20dir/chien%20%C3%A9t%C3%A9%201")
    assert odd["texts"]["missing"] == "missing: heatmap"  # deleted after the run: named, not linked
    assert not any(url.endswith(".heatmap.npy") for url in odd["hrefs"])


def test_texts_from_records_are_escaped(run_dir: Path, report) -> None:
    _, markup, page = report
    assert HOSTILE not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert page.scripts == 1  # the page's own
    card = page.card_of(run_dir, record_of(run_dir, HOSTILE)[0])
    assert card["texts"]["text"] == HOSTILE
    synthetic = page.card_of(run_dir, run_dir / "vqa" / "synthetic.vqa.json")  # named by the test's own Pair
    assert synthetic["texts"]["text"] == "which <b>dog</b> & why?"
    assert synthetic["texts"]["answer"] == "the <i>left</i> one"


def test_caption_bars_are_proportional_to_contributions(run_dir: Path, report) -> None:
    """Bars span |contribution| / max |contribution| of half the track, on the side of their sign; captions are
    listed from most for the answer to most against it, unmeasured ones last."""
    _, _, page = report
    synthetic = page.card_of(run_dir, run_dir / "vqa" / "synthetic.vqa.json")
    shown = [(caption["text"], caption["bar"]) for caption in synthetic["captions"]]
    expected = [("caption 0", ("pos", 100.0)), ("caption 2", ("zero", 0.0)), ("caption 1", ("neg", 50.0))]
    assert shown == [*expected, ("caption 3", None)]

    answered, record = record_of(run_dir, "what is the dog holding?")
    captions = page.card_of(run_dir, answered)["captions"]
    expected = sorted(record["captions"], key=lambda item: -item["contribution"])
    largest = max(abs(item["contribution"]) for item in expected)
    assert len(captions) == len(expected) == 3
    for caption, item in zip(captions, expected, strict=True):
        value = item["contribution"]
        assert caption["text"] == item["caption"] and float(caption["contribution"]) == value
        sign, width = caption["bar"]
        assert sign == ("pos" if value > 0 else "neg" if value < 0 else "zero")
        assert width == pytest.approx(100 * abs(value) / largest, abs=0.01)


def test_a_card_shows_the_strongest_ten_captions(tmp_path: Path) -> None:
    """A VQA record has 100 captions by default: the card keeps the ten that say most, the JSON has them all."""
    contributions = [0.1 * (index - 12) for index in range(25)]  # -1.2 … +1.2
    result = VQAResult("q?", "a", torch.zeros(24, 24), None, [Evidence(f"c{v:+.1f}", [], v) for v in contributions])
    pair = Pair(tmp_path / "image.png", "q?", "test", Path("many"))
    write_vqa(tmp_path, pair, np.zeros((32, 32, 3), np.uint8), result, {})
    page = Page(write_report(tmp_path).path.read_text(encoding="utf-8"))
    (card,) = page.cards
    strongest = [1.2, 1.1, 1.0, 0.9, 0.8, -0.8, -0.9, -1.0, -1.1, -1.2]
    assert [caption["text"] for caption in card["captions"]] == [f"c{value:+.1f}" for value in strongest]
    assert card["texts"]["captions"].startswith("10 of 25 captions")


def test_broken_json_is_reported_and_other_json_ignored(run_dir: Path, report) -> None:
    summary, _, page = report
    assert [item.path for item in summary.skipped] == [run_dir / "broken.json"]
    assert summary.skipped[0].reason.startswith("not JSON")
    assert len(page.skipped) == 1 and page.skipped[0].startswith("broken.json: not JSON")
    assert not any("summary" in url for card in page.cards for url in card["hrefs"])


def test_thumbnails_are_small_and_made_once(run_dir: Path, report) -> None:
    _, markup, page = report
    thumbs = [run_dir / unquote(url) for card in page.cards for url in card["srcs"]]
    assert len(thumbs) == len(page.cards) + 2  # every card has one; the VQA cards also show their answer map
    for thumb in thumbs:
        assert thumb.relative_to(run_dir).parts[0] == THUMB_DIR and thumb.suffix == ".jpg"
        height, width = cv2.imdecode(np.fromfile(thumb, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        assert width <= THUMB_BOX[0] and height <= THUMB_BOX[1]
    stamps = {thumb: thumb.stat().st_mtime_ns for thumb in thumbs}
    stale = run_dir / THUMB_DIR / "deleted-record.overlay.png.jpg"
    stale.write_bytes(b"left from an earlier run")
    again = write_report(run_dir)
    assert {thumb: thumb.stat().st_mtime_ns for thumb in thumbs} == stamps  # not remade: the overlays are older
    assert not stale.exists()
    assert again.path.read_text(encoding="utf-8") == markup


def test_an_empty_folder_gives_an_empty_page_and_a_file_is_refused(tmp_path: Path) -> None:
    summary = write_report(tmp_path)
    assert summary.records == 0 and summary.skipped == [] and Page(summary.path.read_text()).cards == []
    with pytest.raises(NotADirectoryError):
        write_report(summary.path)


def chromium() -> str:
    """The browser binary; a missing browser is a broken test setup, said as such."""
    found = os.environ.get("FUSIONCAM_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))),
        None,
    )
    if not found:
        pytest.fail(
            "no Chromium to render the report with: install it (Debian/Ubuntu as root: "
            "`apt-get update && apt-get install -y chromium`) or set FUSIONCAM_CHROMIUM to a Chrome/Chromium binary"
        )
    return found


def browse(
    page: Path, tmp_path: Path, *args: str, fragment: str = "", javascript: bool = True
) -> tuple[str, list[str]]:
    """Chromium headless on a page from disk (as root it needs --no-sandbox) with a fresh profile: its stdout and
    the page's console messages (script errors, refused loads, failed requests; the page itself logs nothing).

    JavaScript is turned off through the profile's content settings: `--blink-settings=scriptEnabled=false`
    also stops headless Chromium's own `--dump-dom` and `--screenshot`."""
    profile = tmp_path / ("profile" if javascript else "profile-without-js")
    if not javascript:
        (profile / "Default").mkdir(parents=True, exist_ok=True)
        settings = {"profile": {"default_content_setting_values": {"javascript": 2}}}
        (profile / "Default" / "Preferences").write_text(json.dumps(settings))
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    command += ["--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args, page.as_uri() + fragment]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def screenshot(page: Path, tmp_path: Path, name: str) -> tuple[np.ndarray, list[str]]:
    shot = tmp_path / name
    _, console = browse(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", "--force-device-scale-factor=1"
    )
    return cv2.imread(str(shot)), console


def distance_to(screen: np.ndarray, image: np.ndarray) -> float:
    """RMS difference (levels of 255) between `image` and the part of `screen` most like it."""
    squared = cv2.matchTemplate(screen.astype(np.float32), image.astype(np.float32), cv2.TM_SQDIFF).min()
    return float(np.sqrt(max(squared, 0.0) / image.size))


def test_thumbnails_load_in_a_browser(run_dir: Path, report, tmp_path: Path) -> None:
    """The first row's thumbnails appear in the screenshot pixel for pixel; the same page copied away from its
    thumbnails is the control that shows the check can fail."""
    summary, markup, page = report
    shown, console = screenshot(summary.path, tmp_path, "shown.png")
    assert console == []  # nothing refused by the page's Content-Security-Policy, no script error
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text(markup, encoding="utf-8")
    broken, _ = screenshot(elsewhere / "index.html", tmp_path, "broken.png")

    for card in page.cards[:4]:  # the first row at 1200 px
        thumb = cv2.imdecode(np.fromfile(run_dir / unquote(card["srcs"][0]), np.uint8), cv2.IMREAD_COLOR)
        assert distance_to(shown, thumb) < 4, card["texts"]["text"]
        assert distance_to(broken, thumb) > 30, card["texts"]["text"]


def ranks(cards: list[dict]) -> list[int]:
    return [int(card["attrs"]["data-rank"]) for card in cards]


def test_the_script_sorts_and_filters_from_the_url(report, tmp_path: Path) -> None:
    """State comes from the fragment (or the query string); the DOM after the script ran is read back."""
    summary, _, static = report

    def after_script(fragment: str) -> tuple[Page, str]:
        dom, console = browse(summary.path, tmp_path, "--dump-dom", fragment=fragment)
        assert console == []
        return Page(dom), dom

    def score(card: dict) -> float:
        return float(card["attrs"]["data-itm"] or "nan")

    by_score, _ = after_script("#sort=itm-asc")
    assert by_score.controls_hidden is False and len(by_score.visible()) == len(static.cards)
    assert by_score.scripts == 1 and HOSTILE in [card["texts"]["text"] for card in by_score.cards]  # text, not code
    scores = [score(card) for card in by_score.cards]
    assert scores[:5] == sorted(scores[:5]) and all(np.isnan(scores[5:]))  # the two VQA cards have no ITM score

    filtered, dom = after_script("#sort=itm-desc&q=The%20DOGS.jpg")  # every word, any case, anywhere in the card
    expected = [card for card in static.cards if all(t in card["attrs"]["data-search"] for t in ("the", "dogs.jpg"))]
    assert sorted(ranks(filtered.visible())) == ranks(expected) and len(expected) == 3
    scored = sorted((score(card) for card in expected if card["attrs"]["data-itm"]), reverse=True)
    assert [score(card) for card in filtered.visible()][:2] == scored and len(scored) == 2
    assert f'<span id="shown">{len(expected)}</span>' in dom

    by_name, _ = after_script("#sort=name-desc")
    assert ranks(by_name.visible()) == ranks(static.cards)[::-1]
    queried, _ = after_script("?q=stick")
    assert [card["texts"]["text"] for card in queried.visible()] == ["the stick"]


def test_without_javascript_the_page_is_the_static_list(report, tmp_path: Path) -> None:
    summary, _, static = report
    dom = Page(browse(summary.path, tmp_path, "--dump-dom", javascript=False)[0])
    assert dom.controls_hidden is True
    assert ranks(dom.visible()) == list(range(len(static.cards)))


def test_the_report_command_prints_the_page_and_names_what_it_skipped(run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 1  # the broken record
    assert result.stdout.strip() == str(run_dir / "index.html")
    assert "broken.json" in result.stderr and "7 record(s)" in result.stderr
    assert CliRunner().invoke(app, ["report", str(run_dir / "index.html")]).exit_code == 2
