"""Subscribe to a channel, publish to it, print what arrives. Needs `pip install websockets`.

Run a node first: cargo run --release -- serve
"""
import asyncio
import json

import websockets


async def main(url="ws://127.0.0.1:8000/ws"):
    async with websockets.connect(url, subprotocols=["herald.v1.json"]) as ws:
        print("<", await ws.recv())  # welcome
        await ws.send(json.dumps({"v": 1, "type": "subscribe", "id": 1, "channel": "chat:lobby"}))
        print("<", await ws.recv())  # reply: {channel, epoch, offset}
        await ws.send(json.dumps({"v": 1, "type": "publish", "id": 2, "channel": "chat:lobby",
                                  "data": {"text": "hello, herald"}}))
        for _ in range(2):  # the message and the publish reply, in either order
            print("<", await ws.recv())


asyncio.run(main())
