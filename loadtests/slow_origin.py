#!/usr/bin/env python3
"""A backend with a fixed capacity, like a Gunicorn app with K workers.

It serves at most K requests at a time (SERVICE_MS each); others wait for a
worker, and one that waited longer than POOL_TIMEOUT_MS is answered 503
("pool exhausted"), as a drowning app does. On SIGTERM it prints its own view:
requests, 5xx, and the latency percentiles it measured (wait + service).

    slow_origin.py PORT K SERVICE_MS POOL_TIMEOUT_MS
"""
import asyncio
import signal
import sys
import time

PORT, K, SERVICE_MS, POOL_TIMEOUT_MS = (int(a) for a in sys.argv[1:5])
workers = asyncio.Semaphore(K)
latencies = []
errors = 0


async def handle(reader, writer):
    global errors
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            start = time.monotonic()
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            try:
                await asyncio.wait_for(workers.acquire(), POOL_TIMEOUT_MS / 1000)
            except asyncio.TimeoutError:
                errors += 1
                latencies.append(time.monotonic() - start)
                body = b'{"error":"pool exhausted"}'
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            try:
                await asyncio.sleep(SERVICE_MS / 1000)
            finally:
                workers.release()
            latencies.append(time.monotonic() - start)
            body = b'{"ok":true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def report():
    lat = sorted(latencies)
    n = len(lat)
    pct = lambda p: lat[min(n - 1, int(p * n))] * 1000 if n else 0.0
    print(f"origin: {n} requests, {errors} answered 503 ({100.0 * errors / max(n, 1):.1f} %), "
          f"latency p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms", flush=True)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    report()


asyncio.run(main())
