"""Load test of seq2seq-serve on loopback: throughput and latency with 1, 8 and 32 concurrent clients,
against the same requests sent one at a time (the done-means of dynamic batching: 32 clients give at
least 4x the sentences/s of one-at-a-time requests).

    python bench/serve_load.py [run=outputs/m30k] [requests=128] [clients=1,8,32] [batch_wait_ms=5] ...
    python bench/serve_load.py --run outputs/m30k --requests 128          # the same, argparse style

Without run= it first trains a tiny Transformer on a generated word-substitution corpus (seconds;
its outputs are nonsense, its speed is what counts). The server is `python -m seq2seq.serve` in its own
process on a free 127.0.0.1 port (the clients' threads do not share its interpreter lock); every client
is a thread with its own keep-alive HTTP connection; each request carries inputs_per_request inputs.
Only loopback is ever contacted, each phase sends exactly `requests` requests, every request has a
timeout and the whole run a deadline; the server is stopped at the end. Needs the serve extra.
The one-at-a-time baseline runs against a server with batch_wait_ms=0 (waiting for company would only
add latency there); the concurrent phases against one with batch_wait_ms as given (default 5).
Rows: mode, clients, batch_wait_ms, sentences/s, p50 and p95 request latency (ms), decode batches,
requests per batch, failed requests.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sees eats red blue small big house tree runs sleeps under over".split()


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="run folder to serve (default: train a tiny one first)")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--input", default=None, help="file of inputs, one per line (default: generated sentences)")
    parser.add_argument("--requests", type=int, default=128, help="requests per phase")
    parser.add_argument("--inputs-per-request", type=int, default=1)
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=6000)
    parser.add_argument("--beam-size", type=int, default=None, help="options.beam_size (default: the run's)")
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = all cores)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for one request")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole benchmark")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    # key=value (Hydra style) -> --key value
    converted = []
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            converted += [f"--{key.replace('_', '-')}", value]
        else:
            converted.append(arg)
    return parser.parse_args(converted)


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_tiny_run(folder: Path) -> Path:
    """A 1+1-layer Transformer trained for 60 steps on a generated corpus (seconds on a CPU)."""
    data = folder / "toy"
    data.mkdir(parents=True, exist_ok=True)
    translate = {w: w.upper()[::-1] for w in WORDS}
    for split, n, seed in (("train", 1500, 1), ("val", 40, 2), ("test", 40, 3)):
        src = sentences(n, seed)
        (data / f"{split}.src").write_text("\n".join(src) + "\n")
        (data / f"{split}.tgt").write_text("\n".join(" ".join(translate[w] for w in s.split()) for s in src) + "\n")
    run = folder / "run"
    overrides = [
        f"data.root={folder}", "data.path=toy", "data.src=src", "data.tgt=tgt", "data.splits.train=train",
        "data.splits.valid=val", "data.splits.test=test", f"data.cache_dir={folder / 'cache'}",
        "data.batch_tokens=600", "tokenizer.vocab_size=80", "model.embed_dim=32", "model.max_positions=128",
        "model.encoder.layers=1", "model.encoder.heads=2", "model.encoder.ffn_dim=64", "model.decoder.layers=1",
        "model.decoder.heads=2", "model.decoder.ffn_dim=64", "model.attention.heads=2", "optim.lr=0.005",
        "lr_scheduler.warmup_steps=10", "trainer.max_steps=60", "trainer.valid_every=60", "trainer.progress=false",
        "threads=1", f"run_dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEQ2SEQ_DATA", None)
    print(f"training a tiny model in {run} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "seq2seq.train", *overrides], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive connection per thread to 127.0.0.1:port."""

    def __init__(self, port: int, timeout: float):
        self.port, self.timeout = port, timeout
        self.local = threading.local()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        for attempt in (0, 1):  # one reconnect if the server closed an idle connection
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                data = json.dumps(body).encode() if body is not None else None
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def start_server(args, run: Path, batch_wait_ms: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "seq2seq.serve", f"models={{bench: '{run}'}}", "host=127.0.0.1", f"port={port}",
           f"checkpoint={args.checkpoint}", f"batch_wait_ms={batch_wait_ms}",
           f"max_batch_tokens={args.max_batch_tokens}", f"threads={args.threads}", "device=cpu",
           f"max_pending_inputs={max(1024, 64 * args.inputs_per_request)}",
           f"max_inputs={max(64, args.inputs_per_request)}", "auth_token=null"]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server.log = log  # type: ignore[attr-defined]
    client, deadline = Client(port, 5.0), time.monotonic() + 180
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited ({server.returncode}):\n{log.read().decode()[-3000:]}")
        try:
            if client.request("GET", "/health")[0] == 200:
                return server, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit("the server did not answer /health within 180 s")
        time.sleep(0.2)


def phase(client: Client, bodies: list[dict], clients: int, deadline: float) -> dict:
    """Send bodies with `clients` threads (0: one at a time from this thread); latencies and throughput."""
    latencies, errors = [], []
    lock = threading.Lock()

    def send(body):
        if time.monotonic() > deadline:
            raise SystemExit("deadline reached")
        start = time.perf_counter()
        status, answer = client.request("POST", "/v1/generate", body)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            if status != 200:
                errors.append(f"{status}: {answer.get('error')}")

    before = client.request("GET", "/health")[1]
    start = time.perf_counter()
    if clients == 0:
        for body in bodies:
            send(body)
    else:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(send, bodies))
    wall = time.perf_counter() - start
    after = client.request("GET", "/health")[1]
    n_sentences = sum(len(b["inputs"]) for b in bodies)
    batches = after["batches"] - before["batches"]
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    return {"clients": clients or 1, "requests": len(bodies), "sentences": n_sentences, "seconds": round(wall, 3),
            "sentences_per_s": round(n_sentences / wall, 2), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(q[18] * 1000, 1), "batches": batches,
            "requests_per_batch": round((after["requests"] - before["requests"]) / max(batches, 1), 2),
            "errors": errors[:5], "error_count": len(errors)}


def main(argv: list[str]) -> int:
    args = arguments(argv)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.requests < 1 or any(c < 1 for c in levels):
        raise SystemExit("requests and clients must be positive")
    deadline = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        run = Path(args.run) if args.run else train_tiny_run(Path(tmp))
        if args.input:
            pool = [line.rstrip("\n") for line in open(args.input, encoding="utf-8") if line.strip()]
        else:
            pool = sentences(max(args.requests * args.inputs_per_request, 1), seed=11)
        options = {"beam_size": args.beam_size} if args.beam_size else {}
        bodies = [{"model": "bench", "inputs": [pool[(i * args.inputs_per_request + j) % len(pool)]
                                                for j in range(args.inputs_per_request)], "options": options}
                  for i in range(args.requests)]
        rows = []
        # the baseline: one request at a time to a server that never waits for company (batch_wait_ms=0);
        # then 1, 8, 32 ... concurrent clients against the batching server
        for wait, plan in ((0.0, [0]), (args.batch_wait_ms, levels)):
            server, port = start_server(args, run, wait)
            client = Client(port, args.timeout)
            try:
                for body in bodies[: min(4, len(bodies))]:  # warm-up
                    client.request("POST", "/v1/generate", body)
                for clients in plan:
                    name = "one at a time" if clients == 0 else f"{clients} concurrent"
                    rows.append((name, {"batch_wait_ms": wait, **phase(client, bodies, clients, deadline)}))
            finally:
                server.terminate()
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
    label = run if args.run else "(a tiny model trained for this benchmark)"
    print(f"run={label} requests={args.requests} inputs_per_request={args.inputs_per_request} "
          f"batch_wait_ms={args.batch_wait_ms} max_batch_tokens={args.max_batch_tokens} threads={args.threads}")
    print(f"{'mode':<16} {'clients':>7} {'wait ms':>7} {'sent/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'batches':>8} "
          f"{'req/batch':>9} {'errors':>6}")
    for name, r in rows:
        print(f"{name:<16} {r['clients']:>7} {r['batch_wait_ms']:>7g} {r['sentences_per_s']:>9.1f} {r['p50_ms']:>9.1f} "
              f"{r['p95_ms']:>9.1f} {r['batches']:>8} {r['requests_per_batch']:>9.2f} {r['error_count']:>6}")
    sequential = rows[0][1]["sentences_per_s"]
    result = {"rows": [{"mode": name, **r} for name, r in rows]}
    most = max(levels)
    top = next(r for name, r in rows[1:] if r["clients"] == most)
    ratio = top["sentences_per_s"] / sequential
    result["ratio"] = round(ratio, 2)
    print(f"ratio {most} clients / one at a time: {ratio:.2f}x" +
          (f" (done-means, 32 clients >= 4x: {'met' if ratio >= 4 else 'NOT met'})" if most == 32 else ""))
    errors = sum(r["error_count"] for _, r in rows)
    if errors:
        print(f"{errors} requests failed, e.g. {next(r['errors'] for _, r in rows if r['errors'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
