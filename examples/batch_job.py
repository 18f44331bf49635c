"""A batch job (a Celery task, say) that plays a WAV file to the agent and keeps
the agent's spoken answer.

    python examples/batch_job.py question.wav answer.wav

With no arguments it synthesises a question and talks to the offline agent.
``wait_for_reply()`` blocks until the agent's answer to the spoken question is
complete; no callbacks, no events to wire.
"""

import sys

import numpy as np

from speko_sync import BufferAudio, Conversation


def ask(url: str, token: str, question, answer_path: str) -> list[str]:  # type: ignore[no-untyped-def]
    audio = BufferAudio(question)
    with Conversation(token, url, audio=audio) as conv:
        reply = conv.wait_for_reply(timeout=120)  # the agent's next complete turn: its answer
    audio.save_wav(answer_path)
    lines = [f"{m.source.value}: {m.text}" for m in conv.transcript()]
    if reply.first_audio_s is not None:
        lines.append(f"(answered {reply.first_audio_s:.2f} s after the question ended)")
    return lines


def main() -> None:
    from speko_sync.testing import LocalServer, reexec_isolated, tone

    reexec_isolated()
    question = sys.argv[1] if len(sys.argv) > 1 else np.concatenate([np.zeros(24000, np.int16), tone(250, 1.5, 0.4)])
    answer = sys.argv[2] if len(sys.argv) > 2 else "answer.wav"
    with LocalServer() as server:
        server.add_agent("batch", greeting=None)
        for line in ask(server.url, server.token("job-1", "batch"), question, answer):
            print(line)
    print(f"the agent's audio is in {answer}")


if __name__ == "__main__":
    main()
