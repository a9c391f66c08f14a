"""Data-path benchmark: images/s of decode (local archive, cold), cache reads (warm) and url
streaming over loopback at 64 and 128 px; peak RSS of caching + one epoch for a 10,000-image
stage vs a 1,000-image one (each in a fresh process).

    /tmp/dev/bin/python scripts/bench_data.py [--sizes 64 128] [--threads 2]

Archives are built from the bundled sample under a temp dir; nothing touches the internet.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.cache import build_cache, find_cache
from imgae_dx_jax.data.http import open_url
from imgae_dx_jax.data.nih import Record, build_catalog
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset
from imgae_dx_jax.data.stores import sample_archive_path


def make_archive(path: Path, n: int) -> None:
    """A one-stage archive of ``n`` images: the sample's PNGs repeated under new names."""
    with zipfile.ZipFile(sample_archive_path()) as src, zipfile.ZipFile(path, "w") as out:
        pngs = sorted(m for m in src.namelist() if m.endswith(".png"))
        header = src.read("Data_Entry_2017.csv").decode().splitlines()[0]
        rows = [header]
        for i in range(n):
            name = f"{i // 10 + 1:08d}_{i % 10:03d}.png"
            out.writestr(f"images_001/images/{name}", src.read(pngs[i % len(pngs)]))
            label = "No Finding" if i % 2 else "Effusion"
            rows.append(f"{name},{label},0,{i // 10 + 1},50,M,PA,1024,1024,0.14,0.14")
        out.writestr("Data_Entry_2017.csv", "\n".join(rows) + "\n", zipfile.ZIP_DEFLATED)


class RangeServer:
    """Serves one file with HTTP Range support on 127.0.0.1."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                start = int(match.group(1)) if match else 0
                end = int(match.group(2)) + 1 if match and match.group(2) else len(data)
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                self.wfile.write(data[start:end])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/archive.zip"


def rate(source: ImageSource, threads: int) -> float:
    start = time.perf_counter()
    n = sum(len(b["index"]) for b in eval_dataset(source, 256, threads))
    return n / (time.perf_counter() - start)


def throughput(archive: Path, sizes: list[int], threads: int, work: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    server = RangeServer(archive)
    for size in sizes:
        local = ZipStore(archive, cache_dir=work / f"cache{size}")
        records = build_catalog(local, ("images_001",)).records
        results[f"decode local archive {size}px (cold)"] = rate(
            ImageSource(records, local, size, SkipLog(), caches=()), threads
        )
        remote = ZipStore(
            open_url(lambda: server.url, work, retries=3, timeout=30), cache_dir=work / "u"
        )
        start = time.perf_counter()
        build_cache(remote, records, "images_001", size, threads)
        results[f"url loopback -> cache {size}px (first pass)"] = len(records) / (
            time.perf_counter() - start
        )
        start = time.perf_counter()
        build_cache(local, records, "images_001", size, threads)
        results[f"local archive -> cache {size}px (first pass)"] = len(records) / (
            time.perf_counter() - start
        )
        results[f"url loopback, per-image reads {size}px"] = rate(
            ImageSource(records[:2000], remote, size, SkipLog(), caches=()), threads
        )
        warm = ImageSource(records, local, size, SkipLog())
        assert warm.caches, "cache not found"
        rate(warm, threads)  # page cache warm-up
        results[f"cache reads {size}px (warm, grain pipeline)"] = rate(warm, threads)
        cache = find_cache(local, records, "images_001", size)
        start = time.perf_counter()
        for row in range(len(records)):
            cache.read(row)
        results[f"cache reads {size}px (raw, one thread)"] = len(records) / (
            time.perf_counter() - start
        )
    return results


def peak_rss(archive: Path, size: int, threads: int, work: Path) -> None:
    """Child process: cache the stage, then read one epoch through grain; print peak RSS."""
    store = ZipStore(archive, cache_dir=work)
    records: tuple[Record, ...] = build_catalog(store, ("images_001",)).records
    build_cache(store, records, "images_001", size, threads)
    n = sum(
        len(b["index"])
        for b in eval_dataset(ImageSource(records, store, size, SkipLog()), 64, threads)
    )
    print(
        json.dumps(
            {"images": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss-child", nargs=3, metavar=("ARCHIVE", "SIZE", "WORK"))
    args = parser.parse_args()
    if args.rss_child:
        archive, size, work = args.rss_child
        peak_rss(Path(archive), int(size), args.threads, Path(work))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big, small = work / "big.zip", work / "small.zip"
        make_archive(big, 10_000)
        make_archive(small, 1_000)
        print(
            f"archives: 10,000 images {big.stat().st_size / 1e6:.1f} MB, "
            f"1,000 images {small.stat().st_size / 1e6:.1f} MB; {args.threads} threads"
        )
        for name, value in throughput(big, args.sizes, args.threads, work).items():
            print(f"  {name:48s} {value:10,.0f} images/s")
        for size in args.sizes:
            rss = {}
            for label, archive in (("1,000", small), ("10,000", big)):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--rss-child",
                        str(archive),
                        str(size),
                        str(work / f"rss-{label}-{size}"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rss[label] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            print(
                f"  peak RSS {size}px: 1,000 images {rss['1,000']:.0f} MB, 10,000 images "
                f"{rss['10,000']:.0f} MB (+{rss['10,000'] - rss['1,000']:.0f} MB)"
            )


if __name__ == "__main__":
    main()
