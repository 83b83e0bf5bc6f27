"""Object storage for staging, measured against moto's S3 server (a stand-in for Amazon S3).

Two questions, each answered side by side as ratios (``bench/STORAGE.md`` has the figures):

1. Which filesystem layer moves staged Parquet faster: fsspec (s3fs, what tripflow uses) or
   obstore (Rust, object_store)? A PUT of a ~100 MB Parquet file from disk, then a GET back to
   disk, each repeated; the median is reported. obstore is measured only when it is importable
   (it is not a tripflow dependency: run this script from a throwaway venv that has it, see
   STORAGE.md).
2. How should a stage read remote staged Parquet that it scans several times (transform reads
   ``raw/`` three times)? Polars ``scan_parquet`` of the ``s3://`` URL on each pass, or one
   download to local scratch and then local scans. Each variant runs in a fresh child process so
   its peak RSS is its own.

moto's server runs in its own process (``moto_server``) on 127.0.0.1, so client and server do not
share a GIL. It is not S3: no network latency, no per-request cost, no throughput limit per
connection. Ratios between clients are what this measures, not absolute S3 speed.

    .venv/bin/python bench/storage_bench.py --mb 100 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tasks/, from any venv

KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
BUCKET = "bench"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)


def make_parquet(path: Path, mb: int) -> int:
    """Trip-like rows (ids, region, money, distances, timestamps), zstd level 1 as staged."""
    rows = mb * 42_000  # ~24 bytes/row after compression on this data
    rng = np.random.default_rng(42)
    frame = pl.DataFrame(
        {
            "trip_id": [f"t{i:010d}" for i in range(rows)],
            "region": rng.choice(["us-east", "us-west", "eu-central", "ap-south"], rows),
            "fare_usd": rng.gamma(2.0, 9.0, rows).round(2),
            "distance_km": rng.gamma(2.0, 3.0, rows),
            "pickup_ts": rng.integers(1_700_000_000_000, 1_700_086_400_000, rows).astype(
                "datetime64[ms]"
            ),
            "rider_email_hash": [f"{x:016x}" for x in rng.integers(0, 2**62, rows)],
        }
    )
    frame.write_parquet(path, compression="zstd", compression_level=1)
    return path.stat().st_size


def timed(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def s3fs_client(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=endpoint, key=KEYS["AWS_ACCESS_KEY_ID"], secret=KEYS["AWS_SECRET_ACCESS_KEY"]
    )


def transfer(endpoint: str, local: Path, scratch: Path, repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    fs = s3fs_client(endpoint)
    fs.mkdir(BUCKET)
    results["fsspec (s3fs)"] = {
        "put_s": timed(lambda: fs.put_file(str(local), f"{BUCKET}/fsspec.parquet"), repeat),
        "get_s": timed(lambda: fs.get_file(f"{BUCKET}/fsspec.parquet", str(scratch / "a")), repeat),
    }
    assert (scratch / "a").stat().st_size == local.stat().st_size
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return results
    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region=REGION,
        client_options={"allow_http": True},
    )

    def get() -> None:
        with (scratch / "b").open("wb") as handle:
            for chunk in obstore.get(store, "obstore.parquet"):
                handle.write(chunk)

    results["obstore"] = {
        "put_s": timed(lambda: obstore.put(store, "obstore.parquet", local), repeat),
        "get_s": timed(get, repeat),
    }
    assert (scratch / "b").stat().st_size == local.stat().st_size
    return results


def passes(lf: pl.LazyFrame, out: Path) -> None:
    """Transform's access pattern over raw/: two small passes, then a full streaming pass."""
    lf.select(pl.col("trip_id").n_unique()).collect()
    lf.group_by("region").agg(pl.col("fare_usd").sum()).collect()
    lf.filter(pl.col("fare_usd") > 0).sink_parquet(out)


def child(variant: str, endpoint: str, scratch: str) -> None:
    """One read strategy, alone in this process: prints seconds and peak RSS as JSON."""
    url = f"s3://{BUCKET}/fsspec.parquet"
    import s3fs  # noqa: F401 - imported before the clock starts (its cost is measured apart)

    out = Path(scratch) / f"out-{READ_VARIANTS.index(variant)}.parquet"
    start = time.perf_counter()
    if variant == "polars scan_parquet(s3://) per pass":
        options = {
            "aws_endpoint_url": endpoint,
            "aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": KEYS["AWS_SECRET_ACCESS_KEY"],
            "aws_region": REGION,
            "aws_allow_http": "true",
        }
        passes(pl.scan_parquet(url, storage_options=options), out)
    elif variant == READ_VARIANTS[1]:
        local = Path(scratch) / "downloaded.parquet"
        s3fs_client(endpoint).get_file(url, str(local))
        passes(pl.scan_parquet(local), out)
    else:
        from tasks.staging import Staging

        staged = Staging(STAGED_ROOT, s3fs_client(endpoint)).read("raw", DAY)
        passes(staged.scan({}), out)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    status = Path("/proc/self/status").read_text()
    peak_mb = (
        int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM"))) / 1024
    )
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def import_cpu(module: str, repeat: int) -> float | None:
    """CPU seconds (user + system) a fresh interpreter spends importing ``module``, minus a bare
    interpreter's: what every stage process pays before its first request."""

    def cpu(code: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            return float("nan")
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    bare = statistics.median(cpu("pass") for _ in range(repeat))
    cost = statistics.median(cpu(f"import {module}") for _ in range(repeat)) - bare
    return None if cost != cost else cost


READ_VARIANTS = (
    "polars scan_parquet(s3://) per pass",
    "download once (s3fs get_file), scan locally",
    "tripflow Staging.read().scan(): manifest, streamed download + SHA-256, local scans",
)
STAGED_ROOT = f"s3://{BUCKET}/staged"
DAY = date(2025, 11, 15)


def stage_with_tripflow(endpoint: str, local: Path) -> None:
    """Stage the file as tripflow does (parts, then the manifest), for the third read variant."""
    from tasks.staging import Staging

    with Staging(STAGED_ROOT, s3fs_client(endpoint)).write("raw", DAY, "bench") as folder:
        shutil.copyfile(local, folder / "part-00000.parquet")


def reads(endpoint: str, scratch: Path, repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    env = {**os.environ, **KEYS}
    for variant in READ_VARIANTS:
        runs = []
        for _ in range(repeat):
            done = subprocess.run(
                [sys.executable, __file__, "--child", variant, endpoint, str(scratch)],
                capture_output=True,
                text=True,
                check=False,
                env=env,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{variant}: {done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results[variant] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the Parquet file (about)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(KEYS)
    proc, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
            scratch = Path(tmp)
            local = scratch / "trips.parquet"
            size = make_parquet(local, args.mb)
            moved = transfer(endpoint, local, scratch, args.repeat)
            stage_with_tripflow(endpoint, local)
            read = reads(endpoint, scratch, args.repeat)
        imports = {m: import_cpu(m, args.repeat) for m in ("s3fs", "obstore")}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mb = size / 1e6
    print(f"file: {mb:.1f} MB Parquet, median of {args.repeat}, moto_server on 127.0.0.1\n")
    print("| client | PUT s | PUT MB/s | GET s | GET MB/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in moved.items():
        print(
            f"| {name} | {r['put_s']:.2f} | {mb / r['put_s']:.0f} "
            f"| {r['get_s']:.2f} | {mb / r['get_s']:.0f} |"
        )
    if "obstore" in moved:
        base, other = moved["fsspec (s3fs)"], moved["obstore"]
        print(
            f"\nobstore / fsspec time: PUT {other['put_s'] / base['put_s']:.2f}x, "
            f"GET {other['get_s'] / base['get_s']:.2f}x"
        )
    print("\n| import | CPU s |")
    print("|---|---:|")
    for module, cost in imports.items():
        print(f"| {module} | {'not installed' if cost is None else f'{cost:.2f}'} |")
    print("\n| read strategy (3 passes) | seconds | peak RSS MB |")
    print("|---|---:|---:|")
    for name, r in read.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    a, b, c = (read[v]["seconds"] for v in READ_VARIANTS)
    print(
        f"\nremote scans / download-then-local: time {a / b:.2f}x; tripflow's reader {c / b:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
