"""Talk to the offline scripted agent with the plain LiveKit client.

    python examples/local_agent_session.py

Starts a local LiveKit-compatible server with a scripted Speko agent speaking the
v0.0.3 JSON data packets, joins its room, sends a user message and prints what the
agent answers.
"""

import asyncio
import json

from livekit import rtc

from speko_sync.testing import LocalServer, reexec_isolated


async def talk(url: str, token: str) -> None:
    room = rtc.Room()
    answers: asyncio.Queue[dict] = asyncio.Queue()
    room.on("data_received", lambda packet: answers.put_nowait(json.loads(packet.data)))
    await room.connect(url, token)
    print("greeting:", (await answers.get())["text"])
    await room.local_participant.publish_data(json.dumps({"type": "user_message", "text": "hello"}).encode())
    for _ in range(2):
        print("agent:", await answers.get())
    await room.disconnect()


if __name__ == "__main__":
    reexec_isolated()  # WebRTC ignores loopback: run inside a private network namespace
    with LocalServer() as server:
        server.add_agent("example-room", protocol="json")
        asyncio.run(talk(server.url, server.token("me", "example-room")))
