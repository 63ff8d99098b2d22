"""The leaderboard's HTML page in a real browser: at a 1400 px window the table fits and no number wraps."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ssl_bench.models.layers import CONV_LAYERS
from ssl_bench.report.collect import collect
from ssl_bench.report.render import render
from ssl_bench.report.table import build_table

WIDTH = 1400
# the demo's nine methods, as the benchmark names them, with top-1 % per layer of seed 0
METHODS = {
    "colorization/full": (12.1, 20.4, 24.9, 25.3, 23.0), "colorization/class": (11.8, 19.9, 24.1, 24.6, 22.2),
    "colorization/l2": (10.2, 17.3, 20.0, 19.1, 17.4), "context_prediction": (13.0, 19.5, 22.7, 22.0, 19.9),
    "context_encoder": (11.1, 16.2, 16.9, 15.5, 12.0), "supervised": (16.7, 30.2, 38.8, 41.5, 43.3),
    "gaussian/L": (9.8, 12.1, 11.5, 10.9, 9.7), "gaussian/rgb": (10.4, 12.9, 12.2, 11.3, 10.1),
    "kraehenbuehl/rgb": (13.5, 17.8, 18.3, 17.0, 15.2),
}
FAST = {"name": "fast", "recipe": {}, "deviations": [
    "geometry=train", "crop_size=56", "load_size=None", "cache=True", "lr_grid=[0.01, 0.1]",
    "holdout_fraction=0.1", "bias_lr_mult=1.0", "bias_weight_decay=0.0005", "max_steps=None"]}

# every value cell's line count (distinct tops of its text's line boxes), the table's and page's width
LAYOUT_JS = """() => {
  const lines = el => {
    const r = document.createRange(); r.selectNodeContents(el);
    return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size;
  };
  const cells = [...document.querySelectorAll('td.num, td.n')].filter(td => td.textContent.trim());
  return {cells: cells.map(td => [td.textContent, lines(td)]),
          tables: [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right),
          scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
}"""


def browser_or_skip() -> str:
    """Debian's chromium and the playwright package (installed by `make test` through
    tests/browser_setup.sh); missing -> skip, or fail when SSL_BENCH_REQUIRE_BROWSER=1 (CI)."""
    import importlib.util
    if importlib.util.find_spec("playwright") is None or shutil.which("chromium") is None:
        reason = "chromium or the playwright package is missing: `make test` installs them (tests/browser_setup.sh)"
        if os.environ.get("SSL_BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; SSL_BENCH_REQUIRE_BROWSER=1 requires the browser test")
        pytest.skip(reason)
    return shutil.which("chromium")


def demo_like_results(root: Path) -> Path:
    """Three seeds of the demo's nine methods under the fast protocol, plus one run of the published
    protocol (which joins the published rows) and one older run without a protocol entry."""
    for method, top1 in METHODS.items():
        for seed in range(3):
            values = {f"probe/{l}/top1": v + 0.37 * seed for l, v in zip(CONV_LAYERS, top1)}
            record = {"schema_version": 1, "kind": "probe", "probe": "linear", "status": "completed",
                      "method": method, "seed": seed, "metrics": values, "protocol": FAST,
                      "setup": "linear, bilinear resize, frozen trunk, cached centre-crop features",
                      "dataset": {"name": "synthetic_c16_px64_n400_seed0"}}
            (root / f"{method.replace('/', '_')}_{seed}").mkdir(parents=True)
            (root / f"{method.replace('/', '_')}_{seed}" / "results.json").write_text(json.dumps(record))
    paper = {**record, "method": "colorization/full", "seed": 0, "dataset": {"name": "ILSVRC2012"},
             "protocol": {"name": "paper", "recipe": {}, "deviations": []},
             "metrics": {f"probe/{l}/top1": v for l, v in zip(CONV_LAYERS, (13.4, 24.1, 30.2, 31.9, 30.8))}}
    old = {**record, "method": "context_prediction", "protocol": "linear, bilinear resize, 5 layers"}
    for name, rec in (("paper", paper), ("old", old)):
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(rec))
    return root


@pytest.mark.slow
def test_page_fits_1400px_and_no_number_wraps(tmp_path):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    paths = render(build_table(collect([demo_like_results(tmp_path / "runs")])), tmp_path / "out")
    shot = tmp_path / "leaderboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(paths["html"].resolve().as_uri())
        layout = page.evaluate(LAYOUT_JS)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert layout["inner"] == WIDTH
    assert len(layout["cells"]) > 100  # 11 measured rows x 6 values + n, and the published rows
    wrapped = [text for text, lines in layout["cells"] if lines != 1]
    assert not wrapped, f"numbers broken over lines at {WIDTH} px: {wrapped[:5]}"
    assert max(layout["tables"]) <= WIDTH and layout["scroll"] <= WIDTH, layout
    with Image.open(shot) as img:
        assert img.width == WIDTH and img.height > 600
