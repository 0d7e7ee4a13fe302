"""html_report.py: report.html, rendered in a real headless browser (Debian's ``chromium``).

Every image is a PNG ``data:`` URI that the browser loads, the page asks for nothing outside itself, the
metric tables hold the numbers of metrics.json and the answer tables the rows of answers.jsonl (escaped,
never markup), nothing is wider than the window, and a screenshot is taken (and kept: ``report.png`` in
the test's temporary directory) whose pixels are not blank. ``render_html`` rebuilds the page from a run
directory. Skipped when ``chromium`` is not installed (``make test`` installs it).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import tiny_config_dict
from PIL import Image

from internalize import distill
from internalize.behaviours import Behaviour
from internalize.config import CONDITIONS, config_from_dict
from internalize.evaluation import ConditionResult
from internalize.html_report import render_html
from internalize.report import write_report

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                    "chromium; make test installs it)")
PNG = b"\x89PNG\r\n\x1a\n"
WIDTH = 1280

# Appended to a copy of the page only (report.html itself has no script): once everything has loaded, write into the
# DOM whether each image decoded, and how wide the page is, for --dump-dom to carry out.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  document.body.setAttribute("data-images", JSON.stringify(images));
  document.body.setAttribute("data-scroll-width", String(document.documentElement.scrollWidth));
  document.body.setAttribute("data-client-width", String(document.documentElement.clientWidth));
});
</script>"""


def _chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per call
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},2400", *args, page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if child.tag == tag and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text() for p in self.parts)


class Tree(HTMLParser):
    """The DOM chromium dumped, as nested Nodes (enough for tables, images and scripts)."""

    VOID = {"meta", "img", "br", "col", "link", "hr", "input"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        self.stack[-1].parts.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def _check_in_browser(tmp_path: Path, out: Path) -> Node:
    """Render ``out/report.html`` in chromium; check what every page must satisfy; return the dumped DOM."""
    source = (out / "report.html").read_text(encoding="utf-8")
    # self-contained: every reference is a data: URI, no script, no stylesheet or font fetched
    assert "<script" not in source.lower()
    assert all(ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', source))
    assert "url(" not in source and "@import" not in source

    probe = tmp_path / "probe.html"
    probe.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = Tree(_chromium(tmp_path, probe, "--dump-dom").stdout).root
    body = dom.find_all("body")[0]
    assert len(dom.find_all("script")) == 1  # the probe: nothing in the answers became markup

    images = dom.find_all("img")
    assert images, "no plot on the page"
    for img in images:
        src = img.attrs["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.verify()
    loaded = json.loads(body.attrs["data-images"])
    assert len(loaded) == len(images)
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in loaded), loaded
    assert int(body.attrs["data-scroll-width"]) <= int(body.attrs["data-client-width"]), "the page is wider than the window"

    shot = tmp_path / "report.png"
    _chromium(tmp_path, out / "report.html", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (WIDTH, 2400)
        pixels = image.convert("L")
        assert pixels.getextrema()[0] < 100  # some dark text
        assert sum(1 for n in pixels.histogram() if n) > 32  # grey levels: not a blank page
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 200  # the plots' and tables' colours
    return dom


def _check_tables(dom: Node, out: Path, num_examples: int) -> None:
    """The metric tables hold metrics.json, the answer tables the first rows of answers.jsonl."""
    metrics = json.loads((out / "metrics.json").read_text())
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(dom.find_all("table", **{"class": "metrics"})) == len(metrics)
    for name, conditions in metrics.items():
        (table,) = dom.find_all("table", **{"class": "metrics", "data_behaviour": name})
        cells = {(td.attrs["data-condition"], td.attrs["data-key"]): td for td in table.find_all("td")}
        expected = {(c, k): v for c, m in conditions.items() for k, v in m.items() if k != "n"}
        assert set(cells) == set(expected)
        for (c, k), value in expected.items():
            assert float(cells[c, k].attrs["data-value"]) == value
            assert cells[c, k].text().strip() == f"{value:.3f}"
        rows = [r for r in answers if r.get("behaviour", name) == name][:num_examples]
        (table,) = dom.find_all("table", **{"class": "answers", "data_behaviour": name})
        shown = [[td.text() for td in tr.find_all("td")] for tr in table.find_all("tbody")[0].find_all("tr")]
        assert shown == [[r["input"], *(r[c] for c in CONDITIONS)] for r in rows]


def _results(outputs: dict[str, list[str]], student_score: float) -> dict[str, ConditionResult]:
    n = len(outputs["base"])
    scores = {"base": 0.0, "teacher": 1.0, "student": student_score}
    return {c: ConditionResult({"n": n, "agreement": float(c == "teacher") or 1 / 3, "kl": 0.0 if c == "teacher"
                                else 1.0 / (2 + i), "score": scores[c]}, outputs[c])
            for i, c in enumerate(CONDITIONS)}


@needs_chromium
def test_the_page_of_a_two_behaviour_run_in_a_browser(tmp_path):
    cfg = config_from_dict({"model": {"name": "tiny"}, "eval": {"num_examples": 2}, "behaviours": [
        {"name": "over", "prompt": {"context": "End with <Over.> & mean it.",
                                    "demonstrations": [{"input": "a <b>", "output": "c & d"}]}},
        {"name": "keep", "prompt": {"context": ""}},
    ]})
    long = "A long answer without spaces: " + "x" * 400 + " and more " * 40
    held_out = [{"input": "<script>alert('x')</script>"}, {"input": "q2 | & <i>"}, {"input": "q3"}]
    over = _results({"base": [long, "b2", "b3"], "teacher": ["t1 <b>bold</b>", "t2", "t3"],
                     "student": ["t1 <b>bold</b>", "s2\nsecond line", "s3"]}, 2 / 3)
    keep = _results({"base": ["k"], "teacher": ["k"], "student": ["k"]}, 1.0)
    behaviours = [Behaviour(cfg.behaviours[0], [], held_out, None), Behaviour(cfg.behaviours[1], [], held_out[:1], None)]
    first = {"model": "smollm2-135m", "path": "/cache/smollm2"}
    info = {"train_answers": 9, "dropped": {"answer not extracted": 1}, "too_long": {"over.train": 2},
            "forgetting": {"n": 20, "agreement_with_original": 0.85, "kl_original_student": 0.3125},
            "timings": {"load": 1.5, "teacher": 12.0, "train": 30.25}, "steps": 2, "total_s": 43.75,
            "started_from": {"model": "runs/a/model", "path": "runs/a/model",
                             "run": {"dir": "runs/a", "added": ["End with Over."], "started_from": first}}}
    history = [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": 1.0, "lr": 5e-4}]
    out = tmp_path / "run"
    out.mkdir()
    write_report(out, {"over": over, "keep": keep}, behaviours, history, info, cfg)

    dom = _check_in_browser(tmp_path, out)
    _check_tables(dom, out, num_examples=2)
    text = dom.find_all("body")[0].text()
    assert len(dom.find_all("img")) == 2  # metrics.png and loss.png
    assert "End with <Over.> & mean it." in text and "(none)" in text  # the contexts, escaped
    assert "Forgetting check on 20 neutral prompts" in text and "85%" in text
    assert "answer not extracted 1" in text and "over.train 2" in text
    assert "Loss 2.0000 -> 1.0000 over 2 steps." in text
    assert "`runs/a` added" not in text and "runs/a added 'End with Over.'" in text  # the chain, backticks as <code>
    assert [td.text() for td in dom.find_all("td", **{"class": "student same"})] == ["t1 <b>bold</b>", "k"]
    (timings,) = dom.find_all("table", **{"class": "timings"})
    assert [[td.text() for td in tr.find_all("td")][:2] for tr in timings.find_all("tbody")[0].find_all("tr")] == [
        ["load", "1.5"], ["teacher", "12.0"], ["train", "30.2"]]


@pytest.fixture(scope="module")
def tiny_distilled(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    distill(config_from_dict(tiny_config_dict(tiny_model_dir, out)))
    return out


@needs_chromium
def test_a_real_run_writes_the_page_and_it_renders(tiny_distilled, tmp_path):
    dom = _check_in_browser(tmp_path, tiny_distilled)
    _check_tables(dom, tiny_distilled, num_examples=3)
    assert "Answer in one word." in dom.find_all("blockquote")[0].text()


def test_render_html_rebuilds_the_page_from_a_run_directory(tiny_distilled, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_distilled, out, ignore=shutil.ignore_patterns("model"))
    written = (out / "report.html").read_text(encoding="utf-8")
    (out / "report.html").unlink()
    assert render_html(out) == out / "report.html"
    rebuilt = (out / "report.html").read_text(encoding="utf-8")
    # the same page, less the loss figures: the directory does not keep the loss history
    assert re.sub(r"Loss [^<]* steps\.", "", written) == re.sub(
        r"The student training loss per optimizer step\.", "", rebuilt)
    assert rebuilt.count("data:image/png;base64,") == 2
