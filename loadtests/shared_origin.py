#!/usr/bin/env python3
"""A counting origin for loadtests/shared.sh.

Every path answers 200 with a 1 KiB body and `Cache-Control: max-age=300`,
except `GET /__count`, which answers the number of other requests seen so far
(uncacheable). HTTP/1.1 keep-alive, one asyncio loop.

    shared_origin.py PORT
"""
import asyncio
import sys

PORT = int(sys.argv[1])
BODY = b"x" * 1024
seen = 0


async def handle(reader, writer):
    global seen
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/__count":
                body = str(seen).encode()
                cc = b"no-store"
            else:
                seen += 1
                body = BODY
                cc = b"max-age=300"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: %s\r\n"
                b"Content-Type: text/plain\r\n\r\n%s" % (len(body), cc, body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
