"""The HTML book in a real browser: every page of the site built from the smoke-executed chapters opens offline in
headless Chromium with no console error, no request leaving localhost, its math typeset, its images drawn and a
banner on its first screen saying how it was executed. And a build with a failing chapter still writes the rest.
"""

import contextlib
import html
import io
import re
import time

import nbformat
import pytest
from browser import Watch, chromium, serve

from vnas import book, cli

# resolves when MathJax (v2) is ready and has typeset the page (a callback queued behind its typesetting), or at
# once on a page without MathJax
MATHJAX_DONE = """() => new Promise(r => {
  const go = () => MathJax.isReady ? MathJax.Hub.Queue(() => r(true)) : setTimeout(go, 50);
  window.MathJax ? go() : r(false); })"""
PAGE_FACTS = r"""() => {
  const markdown = Array.from(document.querySelectorAll('.jp-RenderedMarkdown')).map(m => {
    const copy = m.cloneNode(true);
    copy.querySelectorAll('code, pre, script, .MathJax, .MathJax_Display, .MathJax_Preview').forEach(e => e.remove());
    return copy.textContent; }).join('\n');
  const mathErrors = document.querySelectorAll('.MathJax_Error, .noError, .merror').length
    + Array.from(document.querySelectorAll('.MathJax')).filter(e => e.textContent.includes('\\')).length;
  const banner = document.querySelector('.vnas-banner');
  const box = banner && banner.getBoundingClientRect();
  return {
    typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
    math_errors: mathErrors,  // a TeX error, or an undefined macro shown as its name
    tex_left: (markdown.match(/\$\$|\\\(|\\\[|\$[^$\s][^$]*\$/g) || []).slice(0, 3),
    broken_images: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
      .map(i => i.src.slice(0, 60)),
    images: document.images.length,
    banner: banner ? banner.innerText : '',
    banner_on_first_screen: !!box && box.top >= 0 && box.bottom <= window.innerHeight,
    prev: (document.querySelector('a[rel=prev]') || {}).href || null,
    next: (document.querySelector('a[rel=next]') || {}).href || null,
  };
}"""


def has_math(notebook) -> bool:
    return any("$" in c.source for c in notebook.cells if c.cell_type == "markdown")


def check_site(browser, site, notebooks: dict, mode_of: dict) -> tuple[list[str], dict]:
    """Open the index and then every chapter page it links, in one tab each, in sequence; return what is wrong
    (one line per problem) and the facts of each page."""
    problems, facts = [], {}
    with serve(site) as base:
        page = browser.new_page()
        watch = Watch(page)
        page.goto(f"{base}/index.html")
        links = page.eval_on_selector_all("table a", "as => as.map(a => a.getAttribute('href'))")
        problems += [f"index.html: {e}" for e in watch.errors + [f"left localhost: {u}" for u in watch.outside]]
        page.close()
        expected = [f"{stem}.html" for stem in notebooks]
        if links != expected:
            problems.append(f"index.html links {links}, expected {expected}")
        for i, name in enumerate(expected):
            page = browser.new_page()
            watch = Watch(page)
            page.goto(f"{base}/{name}", wait_until="load")
            page.evaluate(MATHJAX_DONE)
            f = facts[name] = page.evaluate(PAGE_FACTS)
            page.close()
            problems += [f"{name}: {e}" for e in watch.errors]
            problems += [f"{name}: a request left localhost: {u}" for u in watch.outside]
            if has_math(notebooks[name[:-5]]) and (f["typeset"] == 0 or f["tex_left"] or f["math_errors"]):
                problems.append(f"{name}: math not typeset: {f['typeset']} typeset, TeX left {f['tex_left']}, "
                                f"{f['math_errors']} math errors")
            if f["broken_images"]:
                problems.append(f"{name}: images not drawn: {f['broken_images']}")
            mode = mode_of[name[:-5]]
            if not (f["banner_on_first_screen"] and f"Executed in {mode} mode" in f["banner"]):
                problems.append(f"{name}: no banner saying '{mode} mode' on the first screen: {f['banner']!r}")
            want_prev = f"{base}/{expected[i - 1]}" if i else None
            want_next = f"{base}/{expected[i + 1]}" if i + 1 < len(expected) else None
            if (f["prev"], f["next"]) != (want_prev, want_next):
                problems.append(f"{name}: prev/next are {f['prev']}, {f['next']}; expected {want_prev}, {want_next}")
    return problems, facts


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def smoke_site(tmp_path_factory, smoke_chapters):
    """The site rendered from the notebooks the chapter tests executed in this session (executed here if this
    module runs alone)."""
    runs = [smoke_chapters(path) for path in book.chapters()]
    root = tmp_path_factory.mktemp("smoke_site")
    (root / "notebooks").mkdir()
    for r in runs:
        nbformat.write(r.notebook, root / "notebooks" / f"{r.path.stem}.ipynb")
    start = time.perf_counter()
    entries = book.render(root / "notebooks", root)
    print(f"[site] rendered {len(entries)} pages in {time.perf_counter() - start:.1f} s")
    return root, {r.path.stem: r.notebook for r in runs}


@pytest.mark.slow
def test_every_page_of_the_smoke_book_works_offline(browser, smoke_site):
    site, notebooks = smoke_site
    problems, facts = check_site(browser, site, notebooks, {stem: "smoke" for stem in notebooks})
    assert not problems, "\n".join(problems)
    assert sum(f["typeset"] for f in facts.values()) > 100 and sum(f["images"] for f in facts.values()) > 5
    index = (site / "index.html").read_text()
    # each chapter's title, mode, run time and status (a chapter that failed is test_chapters.py's to report)
    for stem, notebook in notebooks.items():
        row = html.unescape(re.search(rf"<tr><td>{stem[:2]}</td>.*?</tr>", index).group(0))
        assert book.title(notebook) in row and "<td>smoke</td>" in row, row
        assert re.search(rf"<td>\d+ s</td><td>(<b>)?{notebook.metadata['vnas']['status']}", row), row


FAKE_CHAPTERS = {
    "00_fine.py": "# %% [markdown]\n# # Fine\n# The mean $\\mu = \\frac{1}{n}\\sum_i x_i$ and\n"
                  "# $$\\log p(D) \\ge \\text{ELBO}.$$\n\n# %%\nprint('fine')\n",
    "01_broken.py": "# %% [markdown]\n# # Broken\n\n# %%\nx = 1\n\n# %%\nraise ValueError('boom in cell two')\n",
    # quick mode: vnas.widgets.explore returns an ipywidgets `interactive`, whose figure the page must show
    "02_widget.py": "# %% [markdown]\n# # A widget\n\n# %%\nimport matplotlib.pyplot as plt\n\n"
                    "from vnas.widgets import explore\n\n\ndef plot_line(slope=1.0):\n"
                    "    fig, ax = plt.subplots(figsize=(3, 2))\n    ax.plot([0, 1], [0, slope])\n    return fig\n\n\n"
                    "explore(plot_line, slope=(0.5, 2.0))\n",
}


@pytest.fixture(scope="module")
def failing_build(tmp_path_factory):
    """`python -m vnas book` in quick mode over three tiny chapters, the second of which fails."""
    root = tmp_path_factory.mktemp("failing_build")
    (root / "chapters").mkdir()
    for name, text in FAKE_CHAPTERS.items():
        (root / "chapters" / name).write_text(text)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(book, "CHAPTERS_DIR", root / "chapters")
        mp.setenv("VNAS_MODE", "quick")
        code = cli.main(["book", "--out", str(root / "site"), "--timeout", "120"])
    return root, code, err.getvalue()


@pytest.mark.slow
def test_a_failing_chapter_is_on_the_index_and_the_rest_is_written(failing_build, monkeypatch):
    root, code, err = failing_build
    site = root / "site"
    assert code == 1 and "01_broken.py: code cell 2 raised ValueError: boom in cell two" in err, err
    index = (site / "index.html").read_text()
    assert re.search(r"Broken</a></td><td>quick</td><td>\d+ s</td><td><b>failed</b>.*"
                     r"01_broken.py: code cell 2 raised ValueError: boom in cell two", index), index
    for stem in ("00_fine", "01_broken", "02_widget"):
        assert (site / f"{stem}.html").is_file() and (site / "notebooks" / f"{stem}.ipynb").is_file()
    assert "This chapter failed" in (site / "01_broken.html").read_text()

    # Again: the clean chapters are reused (same source, same mode), only the failed one is executed again.
    executed = []
    real = book.execute
    monkeypatch.setattr(book, "execute", lambda path, **kw: executed.append(path.name) or real(path, **kw))
    monkeypatch.setattr(book, "CHAPTERS_DIR", root / "chapters")
    monkeypatch.setenv("VNAS_MODE", "quick")
    assert cli.main(["book", "--out", str(site)]) == 1 and executed == ["01_broken.py"]
    # --from-saved executes nothing and still says the build has a failure
    assert cli.main(["book", "--out", str(site), "--from-saved"]) == 1 and executed == ["01_broken.py"]


@pytest.mark.slow
def test_the_failing_build_works_offline_and_shows_the_widget_figure(browser, failing_build):
    root, _, _ = failing_build
    notebooks = {p.stem: nbformat.read(p, as_version=4) for p in sorted((root / "site" / "notebooks").glob("*.ipynb"))}
    problems, facts = check_site(browser, root / "site", notebooks, {stem: "quick" for stem in notebooks})
    assert not problems, "\n".join(problems)
    assert facts["00_fine.html"]["typeset"] >= 2
    assert "This chapter failed" in facts["01_broken.html"]["banner"]
    widget_page = (root / "site" / "02_widget.html").read_text()
    assert "application/vnd.jupyter.widget" not in widget_page and "vnas-widget-note" in widget_page
    assert facts["02_widget.html"]["images"] == 1  # the figure the widget's Output held, drawn


def test_render_without_notebooks_says_what_to_run(tmp_path):
    with pytest.raises(book.ChapterError, match="No executed notebooks"):
        book.render(tmp_path / "nothing", tmp_path / "site")


def test_math_is_kept_on_one_line_outside_code():
    text = "a $x\n- y$ b `$c\nd$`\n```\n$e\nf$\n```\n$$g\n+ h$$"
    assert book.math_on_one_line(text) == "a $x - y$ b `$c\nd$`\n```\n$e\nf$\n```\n$$g + h$$"


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_browser_is_a_skip_but_a_failure_on_ci(monkeypatch, tmp_path, ci):
    import browser

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="no-chromium.*apt-get install -y --no-install-recommends chromium"):
        browser.require_browser()
