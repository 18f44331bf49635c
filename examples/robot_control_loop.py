"""A control loop that polls the conversation instead of subscribing to events.

    python examples/robot_control_loop.py            # offline, against the local agent
    python examples/robot_control_loop.py URL TOKEN  # a real Speko session

Each 50 ms tick drains the events since the last tick without blocking, so the
loop's timing never depends on the network or on the agent.
"""

import sys
import time

from speko_sync import Conversation, Message, Mode, NullAudio, Status


def control_loop(conv: Conversation, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    conv.send_chat_message("Robot online. What should I do?")
    while conv.status == Status.CONNECTED and time.monotonic() < deadline:
        batch = conv.poll_events()
        if batch.dropped:
            print(f"(missed {batch.dropped} events)")
        for event in batch:
            if isinstance(event.value, Message) and event.value.is_final:
                print(f"{event.value.source.value}: {event.value.text}")
            elif isinstance(event.value, Mode):
                print(f"agent is {event.value.value}")
        time.sleep(0.05)  # the robot's own tick


def main() -> None:
    if len(sys.argv) == 3:
        with Conversation(sys.argv[2], sys.argv[1]) as conv:
            control_loop(conv, 60)
        return
    from speko_sync.testing import LocalServer, reexec_isolated

    reexec_isolated()  # the offline server needs a private network namespace for WebRTC
    with LocalServer(default_agent=True) as server:
        with Conversation(server.token("robot", "workshop"), server.url, audio=NullAudio()) as conv:
            control_loop(conv, 3)


if __name__ == "__main__":
    main()
