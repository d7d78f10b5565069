"""A webhook receiver for the demo, and a reference for partners: verify, then act.

    python -m casehub.webhooks.receiver --port 5001 --secret-file instance/demo-webhook-secret

Each delivery is verified with the `standardwebhooks` library (signature over
`webhook-id.webhook-timestamp.body`, timestamp within five minutes) before it is believed; a
delivery that fails verification is answered 400 and printed as rejected. A real receiver would
then drop duplicates by `webhook-id`, answer 2xx at once, and fetch the referral with its own
token (that read is audited).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 64 * 1024


def make_handler(secret_file: Path, out: Any = sys.stdout) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        server_version = "casehub-demo-receiver"
        sys_version = ""

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self._answer(413)
                return
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                # Read per request: `casehub demo` may have rotated the secret since.
                secret = secret_file.read_text().strip()
                Webhook(secret).verify(body, headers)
            except (OSError, WebhookVerificationError) as error:
                self._say(f"REJECTED delivery {headers.get('webhook-id', '?')}: {error}")
                self._answer(400)
                return
            event = json.loads(body)
            with lock:
                duplicate = event["id"] in seen
                seen.add(event["id"])
            note = " (duplicate: already handled)" if duplicate else ""
            self._say(
                f"webhook {event['type']} verified{note}: id={event['id']} "
                f"data={json.dumps(event['data'], sort_keys=True)}"
            )
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def _say(self, line: str) -> None:
            with lock:
                print(f"receiver: {line}", file=out, flush=True)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per delivery is printed by do_POST

    return Handler


def serve(port: int, secret_file: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(secret_file))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    server = serve(args.port, args.secret_file)
    print(f"receiver: listening on http://127.0.0.1:{args.port}/webhooks", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
