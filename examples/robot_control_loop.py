"""A robot's control loop whose voice agent drives an actuator through a client tool.

    python examples/robot_control_loop.py            # offline, against a local agent
    python examples/robot_control_loop.py URL TOKEN  # a real Speko session

The agent moves the robot by calling the client tool ``move`` (a LiveKit RPC
the agent's function tool makes). The tool runs on a thread of speko_sync's
own and only queues the command; the control loop, ticking every 50 ms, takes
commands off the queue and steps the actuator, so neither the network nor the
agent ever holds up a tick. ``ask()`` sends a typed turn and returns the
agent's answer once it is final.
"""

import queue
import sys
import time

from speko_sync import Conversation, NullAudio, ToolCall, ToolError


class Actuator:
    """A pretend wheel motor: moves at most 0.1 m per tick."""

    def __init__(self) -> None:
        self.position_m = 0.0
        self.target_m = 0.0

    def step(self) -> None:
        delta = max(-0.1, min(0.1, self.target_m - self.position_m))
        self.position_m = round(self.position_m + delta, 3)


commands: "queue.Queue[float]" = queue.Queue(maxsize=8)


def move(distance_m: float) -> str:
    """The client tool: called by the agent with ``{"distance_m": ...}``."""
    if not isinstance(distance_m, (int, float)) or abs(distance_m) > 2:
        raise ToolError("I can move at most 2 metres at a time")  # the agent is told exactly this
    commands.put_nowait(float(distance_m))
    return f"moving {distance_m:g} m"


def control_loop(conv: Conversation, actuator: Actuator, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            actuator.target_m += commands.get_nowait()
        except queue.Empty:
            pass
        actuator.step()
        if actuator.position_m == actuator.target_m and actuator.target_m:
            break
        time.sleep(0.05)  # the robot's own tick
    print(f"robot at {actuator.position_m:g} m")


def run(conv: Conversation) -> None:
    actuator = Actuator()
    reply = conv.ask("Please move forward half a metre.", timeout=30)
    print(f"agent: {reply.text}")
    for call in reply.tool_calls:
        print(f"tool {call.name}({call.arguments}) -> {call.result or call.error} in {call.duration_s * 1000:.0f} ms")
    control_loop(conv, actuator, 5)


def on_tool_call(call: ToolCall) -> None:
    print(f"(the agent called {call.name}: {call.status.value})")


def main() -> None:
    if len(sys.argv) == 3:
        with Conversation(sys.argv[2], sys.argv[1], client_tools={"move": move}, on_tool_call=on_tool_call) as conv:
            run(conv)
        return
    from speko_sync.testing import LocalServer, ScriptedAgent, reexec_isolated

    class RobotAgent(ScriptedAgent):
        """Stands in for a LiveKit Agents worker with a ``move`` function tool."""

        def on_chat(self, text: str, sender: str) -> None:
            if "forward" not in text:
                super().on_chat(text, sender)
                return
            self.set_state("thinking")
            result = self.call_tool(sender, "move", '{"distance_m": 0.5}')
            self.speak(f"Done, I am {result}.", [sender])

    reexec_isolated()  # the offline server needs a private network namespace for WebRTC
    with LocalServer() as server:
        server.add_agent("workshop", agent_class=RobotAgent, greeting=None)
        with Conversation(server.token("robot", "workshop"), server.url, audio=NullAudio(),
                          client_tools={"move": move}, on_tool_call=on_tool_call) as conv:
            run(conv)


if __name__ == "__main__":
    main()
