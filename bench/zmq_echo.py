"""W2's floor: a bare ZeroMQ round trip over ipc:// between two Python processes.

Run from the repository root: ``python bench/zmq_echo.py [--rounds 2000] [--size 64]``.

A DEALER in this process sends ``--size`` bytes to a ROUTER in a child process, which sends them
straight back; one request at a time, timed from send to receipt. This is the least any request
over procpool's control socket can cost in Python on this machine (the daemon's socket is a ROUTER,
the client a DEALER), without any work on either side.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

# The echo side: reply to every message with itself until an empty one arrives.
SERVER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = sock.recv_multipart()
    if not frames[-1]:
        break
    sock.send_multipart(frames)
ctx.destroy(linger=0)
"""


def roundtrips(rounds: int, size: int = 64) -> list[float]:
    """Seconds of each of ``rounds`` round trips (the caller drops warm-up if it wants)."""
    folder = Path(tempfile.mkdtemp(prefix="ppb-zmq-"))
    endpoint = f"ipc://{folder / 'echo.sock'}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, endpoint], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the ZeroMQ echo server did not start (exit {server.wait(5)})")
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        payload = b"x" * size
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            sock.send(payload)
            reply = sock.recv()
            samples.append(time.perf_counter() - start)
            assert reply == payload
        sock.send(b"")
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        return samples
    finally:
        ctx.destroy(linger=0)
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    samples = roundtrips(args.rounds, args.size)[args.rounds // 10:]
    samples.sort()
    print(f"bare ZeroMQ DEALER->ROUTER echo over ipc://, {args.size} bytes, {len(samples)} round trips "
          f"(first 10 % dropped): p50 {samples[len(samples) // 2] * 1e6:.0f} us, "
          f"p99 {samples[len(samples) * 99 // 100] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
