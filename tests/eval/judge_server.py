"""A real OpenAI-compatible HTTP server (stdlib http.server, own thread) that returns canned judgements.

What it replies depends on markers in the answers it is asked to judge:
  GOOD -> 8, BAD -> 2, GARBLE -> a reply with no rating, RATE429 -> 429 on the first try, FAIL500 -> always 500,
  SLOW -> the first try sleeps longer than the client's timeout. Pairwise prompts get both scores, with a +1 bonus
for whichever answer is shown first (a position bias the two orders must cancel).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "test-key"
SLOW_SECONDS = 1.5
_ANSWER = re.compile(r"\[The Start of (?:the Assistant's|Assistant (\d)'s) Answer\]\n(.*?)\n\[The End", re.S)


def _value(answer: str) -> int:
    return 8 if "GOOD" in answer else 2 if "BAD" in answer else 5


class JudgeServer:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()  # requests per user prompt
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _reply(self, user: str, tries: int) -> tuple[int, str | dict[str, Any], dict[str, str]]:
        answers = _ANSWER.findall(user)
        text = " ".join(a for _, a in answers)
        if "FAIL500" in text:
            return 500, "upstream exploded", {}
        if "RATE429" in text and tries == 1:
            return 429, "slow down", {"Retry-After": "0"}
        if "SLOW" in text and tries == 1:
            time.sleep(SLOW_SECONDS)
        if "GARBLE" in text:
            content = "Hmm. Both interesting, I would not like to commit to a number."
        elif len(answers) == 2:
            a1, a2 = _value(answers[0][1]) + 1, _value(answers[1][1])
            content = f"Assistant 1 is judged against Assistant 2.\nScores: [[{a1}, {a2}]]"
        else:
            content = f"The answer is {'good' if _value(text) > 5 else 'weak'}.\nRating: [[{_value(text)}]]"
        message = {"role": "assistant", "content": content}
        body = {"id": "x", "object": "chat.completion", "model": "judge",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
        return 200, body, {}

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))))
            if h.path != "/v1/chat/completions" or h.headers.get("Authorization") != f"Bearer {API_KEY}":
                status, payload, headers = 401, {"error": {"message": "bad key or path"}}, {}
            else:
                user = body["messages"][-1]["content"]
                with self._lock:
                    self.seen[user] += 1
                    tries = self.seen[user]
                status, payload, headers = self._reply(user, tries)
            data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
            try:
                h.send_response(status)
                for k, v in headers.items():
                    h.send_header(k, v)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout path)
        finally:
            with self._lock:
                self.in_flight -= 1
