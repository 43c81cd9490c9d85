"""Screenshot a run's report.html in headless Chromium with one node selected (docs/report-quote-circuit.png).

    python scripts/screenshot_report.py outputs/bench-frontier/density-1_16 single_double_quote sparse 1.k:183 \
        docs/report-quote-circuit.png

Needs the test extra (selenium) and Debian's chromium and chromium-driver, as the browser test does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, help="a run's output folder, holding report.html")
    parser.add_argument("task")
    parser.add_argument("model", help="the circuit's model: sparse, dense, or the path a --model run named")
    parser.add_argument("node", help="the node to select, e.g. 1.k:183")
    parser.add_argument("png", type=Path)
    parser.add_argument("--size", default="1400,900", help="window width,height in pixels")
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--window-size={args.size}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get((args.output_dir / "report.html").resolve().as_uri())
        section = next(s for s in browser.find_elements(By.CSS_SELECTOR, "section.circuit")
                       if (s.get_attribute("data-task"), s.get_attribute("data-model")) == (args.task, args.model))
        node = section.find_element(By.CSS_SELECTOR, f'circle.node[data-node="{args.node}"]')
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", node)
        node.click()
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
        browser.save_screenshot(str(args.png))
    finally:
        browser.quit()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
