"""The bundled model's edit inside a browser (headless Chromium, onnxruntime-web's WebAssembly build) beside
`sanaedit edit`'s on the same machine, in the same run, rounds interleaved.

    python bench/in_browser.py --json bench/results/in-browser-bundled-DATE.json

Rows, each the sample photo (451x300) at seed 0:
- `sanaedit edit` end to end: a fresh process, spawn to exit (what bench/startup.py times).
- The exported folder (`sanaedit export --format web`) on `python -m http.server`: no isolation headers, so one
  WebAssembly thread. The page's own timing (photo picked -> result, in its worker) and, from outside, the wall
  time from navigation to the result on screen (loading the runtime and graphs included; Chromium already open, a
  fresh browser context each round so nothing is cached).
- The same page served by `sanaedit serve` (COOP + COEP: cross-origin isolated) with 2 threads (`?threads=2`).
The last lines compare the pictures: the page's result against the CLI's (PSNR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "sanaedit/assets/sample.jpg"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from edit_speed import psnr  # noqa: E402
from serve_hostile import free_port  # noqa: E402
from startup import timed  # noqa: E402

from tests.conftest import launch_chromium, static_server, wait_js  # noqa: E402


def edit_in_browser(browser, url: str, out: Path) -> dict:
    """One visit in a fresh context: navigation -> model loaded -> photo picked -> result. Seconds of each."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    wait_js(page, "!document.querySelector('[data-testid=run]').disabled", timeout=120)
    ready = time.perf_counter()
    page.set_input_files("[data-testid=photo-input]", str(PHOTO))
    page.click("[data-testid=run]")
    result = "document.querySelector('[data-testid=result]')"
    wait_js(page, f"{result}?.complete && 'editMs' in document.getElementById('timing').dataset", timeout=300)
    done = time.perf_counter()
    timing = page.eval_on_selector("#timing", "t => ({...t.dataset})")
    threads = int(page.get_attribute("#runtime", "data-threads"))
    with page.expect_download() as download:
        page.click("a.download")
    download.value.save_as(out)
    context.close()
    return {
        "navigation_to_result_s": done - start,
        "navigation_to_ready_s": ready - start,
        "page_model_load_s": int(timing["loadMs"]) / 1000,
        "page_edit_s": int(timing["editMs"]) / 1000,
        "click_to_result_s": int(timing["wallMs"]) / 1000,
        "threads": threads,
        **{f"stage_{name.replace(' ', '_')}_s": ms / 1000 for name, ms in json.loads(timing["stages"]).items()},
    }


def start_serve(results: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [sys.executable, "-m", "sanaedit.apps.cli", "serve", "--port", str(port), "-o", str(results), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1).read()
            return f"http://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3)}


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]  # other work on the machine moves every row alike (rounds are interleaved)
    work = Path(tempfile.mkdtemp(prefix="in-browser-bench-"))
    site = work / "site"
    cli = [sys.executable, "-m", "sanaedit.apps.cli"]
    export_s, _ = timed([*cli, "export", "--format", "web", "-o", str(site), "-q"])
    static_url, static = static_server(site)
    serve_url, serve = start_serve(work / "results")
    rows: dict[str, list] = {"cli": [], "static, 1 thread": [], "sanaedit serve, 2 threads": []}
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            version = browser.version
            for round_ in range(args.repeats):
                print(f"round {round_ + 1}/{args.repeats}", file=sys.stderr, flush=True)
                rows["cli"].append(timed([*cli, "edit", str(PHOTO), "--seed", "0", "-q", "-o", str(work / "cli.png")]))
                rows["static, 1 thread"].append(edit_in_browser(browser, static_url + "/", work / "static.png"))
                url = serve_url + "/device/?threads=2"
                rows["sanaedit serve, 2 threads"].append(edit_in_browser(browser, url, work / "served.png"))
            browser.close()
    finally:
        for proc in (static, serve):
            proc.terminate()
            proc.wait()
    report = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
        "browser_version": f"Chromium {version}, headless, WebAssembly (no GPU)",
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # at the start, at the end
        "repeats": args.repeats,
        "photo": "sanaedit/assets/sample.jpg (451x300), seed 0, the bundled model's defaults",
        "export_web_s": round(export_s, 3),
        "cli_end_to_end_s": summary([wall for wall, _ in rows["cli"]]),
        "cli_peak_rss_mb": round(max(rss for _, rss in rows["cli"])),
        "browser": {},
    }
    print("\n| what | median s | min s |\n|---|---|---|")
    print(f"| sanaedit edit, end to end (fresh process) | {report['cli_end_to_end_s']['median']} | "
          f"{report['cli_end_to_end_s']['min']} |")  # fmt: skip
    for name in ("static, 1 thread", "sanaedit serve, 2 threads"):
        runs = rows[name]
        entry = {key: summary([r[key] for r in runs]) for key in runs[0] if key != "threads"}
        entry["threads"] = runs[0]["threads"]
        report["browser"][name] = entry
        for key, label in (
            ("page_edit_s", "the page's own edit time"),
            ("navigation_to_result_s", "navigation to result"),
        ):
            print(f"| in the browser ({name}): {label} | {entry[key]['median']} | {entry[key]['min']} |")
    report["psnr_static_vs_cli_db"] = round(psnr(work / "static.png", work / "cli.png"), 2)
    report["psnr_served_vs_cli_db"] = round(psnr(work / "served.png", work / "cli.png"), 2)
    print(f"\nthe page's result vs sanaedit edit's: {report['psnr_static_vs_cli_db']} dB (static), "
          f"{report['psnr_served_vs_cli_db']} dB (served)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
