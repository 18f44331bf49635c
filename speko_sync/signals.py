"""Every event speko_sync emits, as blinker signals.

Receivers run on the conversation's dispatcher thread (never on the audio or
network threads), in the order events happened; a receiver that raises is
logged and the others still run. Connect with ``sender=conversation`` to hear
one conversation only::

    from speko_sync import signals

    @signals.message.connect_via(conv)
    def on_message(sender, message):
        print(message.source, message.text)

Receivers are held weakly by default (blinker's rule): keep a reference to them,
or connect with ``weak=False``.

====================  ==========================  =================================
signal                keyword argument            type
====================  ==========================  =================================
``connected``         ``conversation_id``         ``str`` (the room name)
``disconnected``      ``details``                 :class:`DisconnectionDetails`
``reconnected``       ``reconnection``            :class:`Reconnection`
``message``           ``message``                 :class:`Message`
``transcript``        ``transcript``              ``tuple[Message, ...]`` (turns)
``status_changed``    ``status``                  :class:`Status`
``mode_changed``      ``mode``                    :class:`Mode`
``agent_state_changed`` ``state``                 :class:`AgentState`
``user_state_changed`` ``state``                  :class:`UserState`
``turn``              ``turn``                    :class:`Turn`
``tool_call``         ``call``                    :class:`ToolCall`
``agent_tools``       ``executed``                :class:`AgentToolsExecuted`
``interruption``      ``interruption``            :class:`Interruption`
``usage``             ``usage``                   ``tuple[ModelUsage, ...]``
``control``           ``event``                   :class:`ControlEvent`
``error``             ``error``                   :class:`SpekoClientError`
====================  ==========================  =================================
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["agent_state_changed", "agent_tools", "connected", "control", "disconnected", "error", "interruption",
           "message", "mode_changed", "namespace", "reconnected", "status_changed", "tool_call", "transcript", "turn",
           "usage", "user_state_changed"]

namespace = Namespace()

connected = namespace.signal("connected", doc="The session is joined and the microphone published.")
disconnected = namespace.signal("disconnected", doc="The session ended; sent once.")
reconnected = namespace.signal("reconnected", doc="A lost link recovered (status back to connected).")
message = namespace.signal("message", doc="A transcript update, agent message or user message echo.")
transcript = namespace.signal("transcript", doc="The whole reconciled transcript after a message; when messages "
                              "come faster than receivers run, only the newest is delivered.")
agent_state_changed = namespace.signal("agent_state_changed", doc="The agent's own state changed.")
user_state_changed = namespace.signal("user_state_changed", doc="The agent's view of the user changed (speaking, "
                                      "listening, away; from its session stream).")
turn = namespace.signal("turn", doc="The agent reported a completed conversation item, with its metrics.")
tool_call = namespace.signal("tool_call", doc="The agent called a client tool; sent once it was answered.")
agent_tools = namespace.signal("agent_tools", doc="The agent reported tools it executed.")
interruption = namespace.signal("interruption", doc="The user talked over the agent (as the agent judged it).")
usage = namespace.signal("usage", doc="The agent's model usage so far.")
control = namespace.signal("control", doc="A control event from the Speko server.")
status_changed = namespace.signal("status_changed", doc="The status changed.")
mode_changed = namespace.signal("mode_changed", doc="The agent started or stopped speaking.")
error = namespace.signal("error", doc="Something went wrong without ending the session (or while ending it).")

#: signal name -> keyword argument its receivers get
PAYLOAD_NAMES = {
    "connected": "conversation_id",
    "disconnected": "details",
    "reconnected": "reconnection",
    "message": "message",
    "transcript": "transcript",
    "agent_state_changed": "state",
    "user_state_changed": "state",
    "turn": "turn",
    "tool_call": "call",
    "agent_tools": "executed",
    "interruption": "interruption",
    "usage": "usage",
    "control": "event",
    "status_changed": "status",
    "mode_changed": "mode",
    "error": "error",
}
