"""A batch job (a Celery task, say) that plays a WAV file to the agent and keeps
the agent's spoken answer.

    python examples/batch_job.py question.wav answer.wav

With no arguments it synthesises a question and talks to the offline agent.
"""

import sys
import threading

import numpy as np

from speko_sync import BufferAudio, Conversation, Message, MessageSource


def ask(url: str, token: str, question, answer_path: str) -> list[str]:  # type: ignore[no-untyped-def]
    audio = BufferAudio(question)
    transcript: list[str] = []
    answered = threading.Event()

    def on_message(message: Message) -> None:
        if message.is_final:
            transcript.append(f"{message.source.value}: {message.text}")
            if message.source == MessageSource.AGENT and transcript[:-1]:
                answered.set()

    with Conversation(token, url, audio=audio, on_message=on_message):
        audio.wait_until_fed(timeout=120)
        answered.wait(timeout=30)
    audio.save_wav(answer_path)
    return transcript


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
