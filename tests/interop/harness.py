"""What the interop scripts share: one line per check, a recording fake
upstream's answers (JSON, or an SSE stream sent chunk by chunk), and
`infermux serve` started on a config, on a free port.

The scripts run as `python tests/interop/NAME.py`, so this module is
importable as `harness` from their own directory.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler


def check(cond, what):
    if not cond:
        print(f"FAIL {what}")
        sys.exit(1)
    print(f"ok   {what}")


class Recording(BaseHTTPRequestHandler):
    """A fake upstream: `seen` gets (path with query, lower-cased headers,
    JSON body) of every POST, in arrival order; subclasses answer with
    `answer(path, body)` through `json` and `sse`."""

    protocol_version = "HTTP/1.1"
    seen = []
    # Extra headers on every JSON answer (an upstream request id, say).
    answer_headers = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.answer(self.path.split("?")[0], body)

    def answer(self, path, body):
        raise NotImplementedError

    def json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in self.answer_headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def sse(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for e in events:
            piece = e.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def start_infermux(binary, config):
    """`infermux serve` on `config` (YAML text) at 127.0.0.1:0; returns the
    process and its base URL, read from its first JSON log line."""
    path = os.path.join(tempfile.mkdtemp(prefix="infermux-interop-"), "infermux.yml")
    with open(path, "w") as f:
        f.write(config)
    proc = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--config", path, "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            addr = json.loads(line).get("addr")
        except ValueError:
            continue
        if addr:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, f"http://{addr}"
    proc.kill()
    check(False, "infermux started and said where it listens")
