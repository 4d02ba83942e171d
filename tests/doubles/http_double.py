"""A tiny real OpenAI-compatible HTTP server on 127.0.0.1 for the client-facing tests.

It answers ``/v1/chat/completions`` from a script of replies (``"ok"``, ``"json"``,
``"garbage"``, ``"500"``, ``"400"``, ``"echo401"``, ``"text:…"``, ``"sleep:S"`` = answer "ok"
after S seconds, ``"slow_if:WORD:S"`` = the same only for requests whose body holds WORD, for
the client's own timeout), the last one repeating, and
records every request's headers and JSON body, so tests can see what the real ``ChatOpenAI``
client sent and how often it tried.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(content: str) -> dict[str, Any]:
    """A well-formed chat completion whose message text is ``content``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


#: The reply a "json" step sends: a schema answer the reasoning agent accepts.
JSON_ANSWER = json.dumps({"description": "A calm voice and a smile.", "emotion": "happy"})


@dataclass
class ScriptedServer:
    """The replies still to send and the requests seen so far."""

    script: list[str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    closing: threading.Event = field(default_factory=threading.Event)

    def next_step(self, headers: dict[str, str], body: dict[str, Any]) -> str:
        with self.lock:
            self.requests.append({"headers": headers, "body": body})
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            headers = {k.lower(): v for k, v in self.headers.items()}
            step = server.next_step(headers, body)
            if step.startswith("slow_if:"):
                _, word, seconds = step.split(":", 2)
                step = f"sleep:{seconds}" if word in json.dumps(body) else "ok"
            if step.startswith("sleep:"):
                # An Event, not time.sleep: tests record (and skip) time.sleep for backoff waits.
                server.closing.wait(float(step[len("sleep:") :]))
                step = "ok"
            if step == "garbage":
                self._send(200, b"<html>upstream proxy hiccup, not json")
            elif step == "500":
                self._send(500, json.dumps({"error": {"message": "overloaded"}}).encode())
            elif step == "400":
                message = "response_format json_schema is not supported by this server"
                self._send(400, json.dumps({"error": {"message": message}}).encode())
            elif step == "echo401":
                # A misconfigured proxy that quotes the request back, key included.
                auth = headers.get("authorization", "")
                message = f"invalid credentials: auth={auth}"
                self._send(401, json.dumps({"error": {"message": message}}).encode())
            else:
                content = JSON_ANSWER if step == "json" else "Calm and clear.\nAnswer: neutral"
                if step.startswith("text:"):
                    content = step[len("text:") :]
                self._send(200, json.dumps(completion(content)).encode())

        def _send(self, status: int, payload: bytes) -> None:
            if server.closing.is_set():
                return  # the client gave up long ago
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    return Handler


@contextmanager
def scripted_server(*script: str) -> Iterator[ScriptedServer]:
    """Serve ``script`` on a free port of 127.0.0.1; ``.url`` is the ``/v1`` base URL."""
    state = ScriptedServer(script=list(script) or ["ok"])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_port}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
