"""Slow-consumer scenarios against a running herald node, with the Python `websockets` library.

Usage: python slow_consumers.py ws://HOST:PORT/ws

Run by scripts/python-scenarios, which starts the node (anonymous clients, high rate limits, a history
long enough for the resume). Each scenario prints one line; the script exits 1 with the reasons when any
failed, 0 otherwise.

(a) burst: a subscriber reading normally (`async for`) while 4 other connections publish 2,500 messages
    of 2 KB as fast as the node takes them must receive all 2,500, in order, and never be closed (4001
    included).
(b) resume: a client subscribes, records its position (epoch and offset of the reply), disconnects;
    1,500 messages are published; it resubscribes with `since` while 4 publishers keep publishing 1,500
    more. It must get `recovered: true` (replayed >= 1,500) and all 3,000, in order, and never be closed.

Every connection speaks herald.v1.json; the publishers run in the same event loop as the subscriber.
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

PROTO = "herald.v1.json"
PAD = "x" * 2000  # ~2 KB of data per message
FRAME_TIMEOUT = 30.0  # seconds without a frame before a scenario gives up
PUBLISHERS = 4  # connections publishing a burst at once, each a contiguous range of i


class Failure(Exception):
    pass


def close_info(ws, exc=None):
    rcvd = getattr(exc, "rcvd", None) or getattr(ws, "close_rcvd", None)
    if rcvd is not None:
        return f"closed by the server with {rcvd.code} ({rcvd.reason!r})"
    return f"connection lost ({exc!r})"


async def open_ws(url):
    # max_size: herald frames are far below 1 MiB; max_queue is the library's default (16 frames).
    ws = await connect(url, subprotocols=[PROTO], max_size=1 << 20, open_timeout=10)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
    if welcome.get("type") != "welcome":
        raise Failure(f"first frame is not welcome: {welcome}")
    return ws


async def request(ws, frame):
    """Sends a command and returns its reply (result); no other frame may come before it."""
    frame = {"v": 1, **frame}
    await ws.send(json.dumps(frame))
    reply = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
    if reply.get("type") != "reply" or reply.get("id") != frame["id"]:
        raise Failure(f"{frame['type']} got {reply}")
    return reply["result"]


async def publish(url, channel, start, count):
    """Publishes data {"i": start..start+count-1, "pad": 2 KB} as fast as the socket takes them, reading
    the replies on the side. Returns the offset of the last one."""
    ws = await open_ws(url)
    last = {"offset": None}

    async def replies():
        for _ in range(count):
            f = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
            if f.get("type") != "reply":
                raise Failure(f"publisher got {f}")
            last["offset"] = f["result"]["offset"]

    try:
        reader = asyncio.create_task(replies())
        for k in range(count):
            i = start + k
            await ws.send(json.dumps(
                {"v": 1, "type": "publish", "id": i, "channel": channel, "data": {"i": i, "pad": PAD}}))
        await reader
    except ConnectionClosed as e:
        raise Failure(f"publisher: {close_info(ws, e)}") from None
    finally:
        await ws.close()
    return last["offset"]


async def publish_many(url, channel, start, count, conns=PUBLISHERS):
    """Publishes i = start..start+count-1 from `conns` connections at once, each a contiguous range, as
    fast as the node takes them. Returns the ranges as (first i, count)."""
    size = count // conns
    ranges = [(start + k * size, size if k < conns - 1 else count - k * size) for k in range(conns)]
    await asyncio.gather(*[publish(url, channel, a, c) for a, c in ranges])
    return ranges


async def read_in_order(ws, ranges, last_offset, what):
    """Reads every message of `ranges` (see publish_many) with `async for`: increasing offsets, and the
    i of each publisher's range consecutive, so nothing is missing, doubled or reordered."""
    want = sum(c for _, c in ranges)
    expect = [a for a, _ in ranges]
    got, last = 0, last_offset
    try:
        async with asyncio.timeout(FRAME_TIMEOUT + want * 0.02):
            async for raw in ws:
                f = json.loads(raw)
                if f.get("type") == "disconnect":
                    raise Failure(f"{what}: `disconnect` after {got}/{want} messages: {f}")
                if f.get("type") != "message":
                    raise Failure(f"{what}: unexpected frame after {got}/{want} messages: {f}")
                if f["offset"] <= last:
                    raise Failure(f"{what}: offset {f['offset']} after {last} (duplicate or reorder)")
                i = f["data"]["i"]
                k = next((k for k, (a, c) in enumerate(ranges) if a <= i < a + c), None)
                if k is None or i != expect[k]:
                    raise Failure(f"{what}: got i={i} after {got} messages, expected one of {expect} "
                                  "(gap, duplicate or reorder)")
                last, expect[k], got = f["offset"], i + 1, got + 1
                if got == want:
                    return last
    except ConnectionClosed as e:
        raise Failure(f"{what}: {close_info(ws, e)} after {got}/{want} messages") from None
    except TimeoutError:
        raise Failure(f"{what}: only {got}/{want} messages before the timeout") from None
    raise Failure(f"{what}: {close_info(ws)} after {got}/{want} messages")


async def scenario_burst(url):
    n, channel = 2500, f"py:burst-{time.monotonic_ns()}"
    sub = await open_ws(url)
    head = (await request(sub, {"type": "subscribe", "id": 1, "channel": channel}))["offset"]
    t0 = time.monotonic()
    size = n // PUBLISHERS
    ranges = [(k * size, size if k < PUBLISHERS - 1 else n - k * size) for k in range(PUBLISHERS)]
    pub = asyncio.create_task(publish_many(url, channel, 0, n))
    try:
        await read_in_order(sub, ranges, head, "burst subscriber")
    finally:
        await sub.close()
    await pub
    return f"{n} x 2 KB from {PUBLISHERS} publishers received in order in {time.monotonic() - t0:.2f} s"


async def scenario_resume(url):
    n, channel = 1500, f"py:resume-{time.monotonic_ns()}"
    ws = await open_ws(url)
    pos = await request(ws, {"type": "subscribe", "id": 1, "channel": channel})
    await ws.close()
    since = {"epoch": pos["epoch"], "offset": pos["offset"]}
    missed = await publish_many(url, channel, 0, n)
    ws = await open_ws(url)
    t0 = time.monotonic()
    live = asyncio.create_task(publish_many(url, channel, n, n))
    try:
        res = await request(ws, {"type": "subscribe", "id": 2, "channel": channel, "since": since})
        if res.get("recovered") is not True:
            raise Failure(f"resume not recovered: {res}")
        if res.get("replayed", 0) < n:
            raise Failure(f"resume replayed {res.get('replayed')} (< {n}): {res}")
        size = n // PUBLISHERS
        ranges = missed + [(n + k * size, size if k < PUBLISHERS - 1 else n - k * size)
                           for k in range(PUBLISHERS)]
        await read_in_order(ws, ranges, pos["offset"], "resuming subscriber")
    finally:
        await ws.close()
    await live
    return (f"resumed with replayed={res['replayed']}, {2 * n} x 2 KB received in order "
            f"in {time.monotonic() - t0:.2f} s")


async def main(url):
    failed = []
    for name, scenario in [("a: burst", scenario_burst), ("b: resume", scenario_resume)]:
        try:
            print(f"PASS {name}: {await scenario(url)}", flush=True)
        except Failure as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed.append(name)
    if failed:
        print(f"slow_consumers.py: {len(failed)} scenario(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("slow_consumers.py: all scenarios passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))
