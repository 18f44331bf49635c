"""Client tools, pure rules: arguments from payloads, results to payloads,
what an exception tells the agent, what can be a tool; the tool pool."""

from __future__ import annotations

import threading

import pytest

from speko_sync import ToolError
from speko_sync._tools import (
    MAX_PAYLOAD,
    ToolPool,
    check_tool,
    check_tools,
    encode_result,
    error_message,
    parse_arguments,
)


@pytest.mark.parametrize(("payload", "args", "kwargs"), [
    ('{"on": true, "level": 3}', (), {"on": True, "level": 3}),
    ("{}", (), {}),
    ("", (), {}),
    ("   ", (), {}),
    ("kitchen", ("kitchen",), {}),
    ("[1, 2]", ("[1, 2]",), {}),
    ('"quoted"', ('"quoted"',), {}),
    ("42", ("42",), {}),
    ("{not json", ("{not json",), {}),
])
def test_a_json_object_payload_is_keyword_arguments_and_anything_else_one_string(payload, args, kwargs) -> None:
    got_args, got_kwargs, reported = parse_arguments(payload)
    assert (got_args, got_kwargs) == (args, kwargs)
    assert reported == (kwargs if not args else payload)


@pytest.mark.parametrize(("value", "wire"), [
    ("done", "done"),
    ("", ""),
    ({"ok": True}, '{"ok": true}'),
    ([1, "a"], '[1, "a"]'),
    (None, "null"),
    (3.5, "3.5"),
    ("é", "é"),
])
def test_a_str_result_is_sent_as_it_is_anything_else_as_json(value, wire) -> None:
    assert encode_result(value) == wire


def test_results_json_cannot_encode_or_too_large_are_value_errors_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="set, which is not JSON-serializable"):
        encode_result({1, 2})
    with pytest.raises(ValueError, match="not JSON-serializable"):
        encode_result(float("nan"))
    with pytest.raises(ValueError, match=f"over LiveKit's {MAX_PAYLOAD}"):
        encode_result("x" * (MAX_PAYLOAD + 1))
    assert encode_result("x" * MAX_PAYLOAD) == "x" * MAX_PAYLOAD


def test_an_exception_tells_the_agent_its_message_never_a_traceback() -> None:
    assert error_message(ToolError("the light is broken")) == "the light is broken"
    assert error_message(ValueError("bad level")) == "bad level"
    assert error_message(KeyError("x")) == "'x'"
    assert error_message(RuntimeError()) == "RuntimeError"
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as exc:
        message = error_message(exc)
    assert "Traceback" not in message and message == "division by zero"
    assert len(error_message(RuntimeError("x" * 10_000))) == 4096


def test_what_cannot_be_a_tool_is_refused_with_the_right_error() -> None:
    async def coroutine() -> None:
        pass

    class AsyncCallable:
        async def __call__(self) -> None:
            pass

    with pytest.raises(TypeError, match="must be a str"):
        check_tool(3, print)
    with pytest.raises(ValueError, match="1 to 128 characters"):
        check_tool("", print)
    with pytest.raises(ValueError, match="1 to 128 characters"):
        check_tool(" padded", print)
    with pytest.raises(ValueError, match="1 to 128 characters"):
        check_tool("x" * 129, print)
    with pytest.raises(TypeError, match="must be callable"):
        check_tool("x", "print")
    with pytest.raises(TypeError, match="coroutine function"):
        check_tool("x", coroutine)
    with pytest.raises(TypeError, match="coroutine function"):
        check_tool("x", AsyncCallable())
    check_tool("set_light", lambda on: on)
    with pytest.raises(TypeError, match="mapping of name -> function"):
        check_tools([("x", print)])
    assert check_tools(None) == {}
    assert check_tools({"a": print}) == {"a": print}


def test_the_pool_runs_calls_on_daemon_threads_of_its_own_bounded_in_number() -> None:
    pool = ToolPool(threads=2)
    release = threading.Event()
    started = threading.Semaphore(0)
    names: list[str] = []

    def blocked() -> str:
        names.append(threading.current_thread().name)
        started.release()
        release.wait(10)
        return threading.current_thread().name

    futures = [pool.submit(blocked) for _ in range(3)]
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    assert not started.acquire(timeout=0.2)  # the third waits: two threads only
    release.set()
    results = [f.result(5) for f in futures]
    assert set(results) <= {"speko-tool-1", "speko-tool-2"} and len(set(names)) == 2
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("speko-tool"))
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert pool.submit(lambda: "again").result(5) == "again"  # a raising call does not kill its thread
