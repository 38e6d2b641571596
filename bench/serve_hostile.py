"""The server under hostile conditions (issue 11), measured on a real `sanaedit serve` process on loopback.

    python bench/serve_hostile.py [--model DIR] [--concurrency 8] [--work DIR] [--json OUT] [--quick]

Reports: what each input of the hostile corpus gets (status, message, time; for accepted ones the job's end);
the server's peak RSS while N clients (each its own loopback address, 127.0.0.2...) upload the heaviest accepted
inputs at once, against its RSS when idle after a first job ("model" = that baseline); its RSS after the burst;
how long a stalled upload and a connection with incomplete headers are kept. Peak RSS is the kernel's VmHWM of
the server process, reset before the burst (/proc/PID/clear_refs), with 20 ms RSS sampling as a fallback.
Default server limits throughout (queue 8, 25 MB uploads, 40 M pixels, 20:1 aspect, 15 s upload idle timeout,
10 s header timeout).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
HEAVY = ["16-bit 6300x6300 PNG", "RGBA 6300x6300 PNG", "palette+alpha 6300x6300 PNG", "JPEG 6000x6000",
         "float32 TIFF 4000x4000", "noise PNG 2900x2900"]  # fmt: skip


def _png(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def corpus(folder: Path) -> dict[str, bytes]:
    """The hostile inputs of issue 11 (and the ones before it), cached in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    makers = {
        "photo 1600x1200 JPEG": lambda: _encoded(
            Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)), "JPEG", quality=90
        ),
        "1x1 PNG": lambda: _png(Image.new("RGB", (1, 1), "red")),
        "strip 40000000x1 PNG": lambda: _png(Image.new("L", (40_000_000, 1), 128)),
        "strip 20000x1 PNG": lambda: _png(Image.new("RGB", (20_000, 1), (1, 2, 3)), optimize=True),
        "16-bit 6300x6300 PNG": lambda: _png(Image.new("I;16", (6300, 6300), 30000)),
        "RGBA 6300x6300 PNG": lambda: _png(Image.new("RGBA", (6300, 6300), (20, 120, 220, 200))),
        "palette+alpha 6300x6300 PNG": lambda: _png(Image.new("P", (6300, 6300), 3), transparency=0),
        "JPEG 6000x6000": lambda: _encoded(Image.new("RGB", (6000, 6000), (10, 200, 30)), "JPEG", quality=90),
        "float32 TIFF 4000x4000": lambda: _encoded(
            Image.fromarray(np.full((4000, 4000), 0.5, np.float32), "F"), "TIFF", compression="tiff_deflate"
        ),
        "noise PNG 2900x2900": lambda: _png(  # a 25 MB body: the largest upload that is still an accepted photo
            Image.fromarray(rng.integers(0, 255, (2900, 2900, 3), dtype=np.uint8)), compress_level=1
        ),
        "CMYK JPEG 4000x3000": lambda: _encoded(Image.new("CMYK", (4000, 3000), (0, 80, 160, 20)), "JPEG"),
        "bomb header 12000x12000 PNG": lambda: _header_only_png(12000, 12000),
        "EPS": lambda: EPS,
        "truncated PNG": lambda: _png(Image.new("RGB", (300, 200), "blue"))[:200],
        "not an image": lambda: b"hello, this is text\n" * 10,
        "empty": lambda: b"",
        "26 MB of noise": lambda: rng.integers(0, 255, 26 * 2**20, dtype=np.uint8).tobytes(),
    }
    data = {}
    for name, make in makers.items():
        path = folder / (name.replace(" ", "_") + ".bin")
        if not path.exists():
            path.write_bytes(make())
        data[name] = path.read_bytes()
    return data


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=300)


def wait_job(http: httpx.Client, url: str, job_id: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = http.get(f"{url}/api/jobs/{job_id}").json()
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    return {"state": "timeout"}


def upload(http: httpx.Client, url: str, name: str, body: bytes, retries: int = 60) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    for _ in range(retries):
        res = http.post(f"{url}/api/jobs", params={"steps": 2, "name": name}, content=body)
        if res.status_code != 503:
            break
        time.sleep(float(res.headers.get("retry-after", "1")))
    return res, time.perf_counter() - start


def time_to_cut(port: int, payload: bytes, limit: float = 120.0) -> tuple[float, bytes]:
    """Seconds until the server answers or closes a connection that sent `payload` and then nothing."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        start = time.perf_counter()
        s.settimeout(limit)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return time.perf_counter() - start, got.split(b"\r\n", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--work", default=None, help="folder for the corpus and results (default: a temp folder)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--quick", action="store_true", help="fewer inputs alone (CI)")
    parser.add_argument("--burst-input", default=None, help="every client of the burst uploads this input")
    parser.add_argument("--before", default=None, help="run the server from this copy of older code (comparison)")
    parser.add_argument("--skip", action="append", default=[], metavar="INPUT", help="leave this input out")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="serve-hostile-"))
    data = corpus(work / "corpus")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out_flag = "--out" if args.before else "-o"  # the code before issue 11 spelled it --out
    cmd = [sys.executable, "-m", "sanaedit.apps.cli", "serve", "--port", str(port), out_flag, str(work / "results")]
    cmd += ["--model", args.model] if args.model else []
    env = {**os.environ, "PYTHONPATH": args.before} if args.before else None
    log = open(work / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.before or None)
    report: dict = {"model": args.model or "bundled", "concurrency": args.concurrency, "inputs": []}
    report["burst"] = args.burst_input or "round robin: " + ", ".join(HEAVY)
    try:
        http = client("127.0.0.1")
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (work / "server.log").read_text()[-3000:]
            try:
                if http.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        res, _ = upload(http, url, "warm-up.jpg", data["photo 1600x1200 JPEG"])
        wait_job(http, url, res.json()["id"])
        time.sleep(1.0)
        report["baseline_rss_mb"] = round(rss_mb(server.pid), 1)

        # each input alone
        names = list(data) if not args.quick else [n for n in data if n not in ("CMYK JPEG 4000x3000",)]
        names = [n for n in names if n not in args.skip]
        for name in names:
            t0 = time.perf_counter()
            res, took = upload(http, url, name, data[name])
            row = {"input": name, "bytes": len(data[name]), "status": res.status_code, "seconds": round(took, 2)}
            if res.status_code == 202:
                state = wait_job(http, url, res.json()["id"])
                row["state"] = state["state"]
                row["job_seconds"] = round(time.perf_counter() - t0, 2)
                if state["state"] == "done":
                    got = Image.open(io.BytesIO(http.get(url + state["result"]).content))
                    row["result_size"] = list(got.size)
                else:
                    row["detail"] = state.get("error", "")
            else:
                row["detail"] = (res.json().get("detail") if res.headers.get("content-type", "").startswith(
                    "application/json") else res.text)[:160]  # fmt: skip
            report["inputs"].append(row)
            print(f"{name:32} {row['status']} {row.get('state', '')} {row.get('detail', '')}"[:150], flush=True)

        # N clients at once, each from its own address, the heaviest accepted inputs
        time.sleep(1.0)
        report["rss_before_burst_mb"] = round(rss_mb(server.pid), 1)
        report["peak_reset"] = reset_peak(server.pid)
        samples = [rss_mb(server.pid)]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    samples.append(rss_mb(server.pid))
                except OSError:
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def one(i: int):
            with client(f"127.0.0.{2 + i}") as c:
                name = args.burst_input or HEAVY[i % len(HEAVY)]
                res, _ = upload(c, url, name, data[name])
                if res.status_code != 202:
                    return res.status_code, "refused"
                return 202, wait_job(c, url, res.json()["id"])["state"]

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            outcomes = list(pool.map(one, range(args.concurrency)))
        report["burst_seconds"] = round(time.perf_counter() - start, 1)
        stop.set()
        sampler.join()
        peak = max(max(samples), rss_mb(server.pid, "VmHWM") if report["peak_reset"] else 0)
        report["burst_outcomes"] = [f"{code} {state}" for code, state in outcomes]
        report["peak_rss_mb"] = round(peak, 1)
        report["peak_over_baseline_mb"] = round(peak - report["baseline_rss_mb"], 1)
        time.sleep(2.0)
        report["rss_after_mb"] = round(rss_mb(server.pid), 1)

        # stalled uploads and incomplete headers, both at once
        stalled = b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n\x89PNG\r\n"
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(time_to_cut, port, stalled)
            b = pool.submit(time_to_cut, port, b"POST /api/jobs HTTP/1.1\r\nHost: 127.0")
            (report["stalled_upload_cut_off_s"], first_a), (report["incomplete_headers_cut_off_s"], first_b) = (
                a.result(),
                b.result(),
            )
        report["stalled_upload_reply"], report["incomplete_headers_reply"] = first_a.decode(), first_b.decode()
        report["stalled_upload_cut_off_s"] = round(report["stalled_upload_cut_off_s"], 1)
        report["incomplete_headers_cut_off_s"] = round(report["incomplete_headers_cut_off_s"], 1)
        report["server_alive_after"] = http.get(f"{url}/api/health").json().get("status") == "ok"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(json.dumps({k: v for k, v in report.items() if k != "inputs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
