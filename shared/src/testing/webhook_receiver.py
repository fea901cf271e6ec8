# A webhook receiver for the tests: verifies every delivery with the Standard Webhooks
# library (`pip install standardwebhooks`), answers the first attempt of each webhook-id
# 500 and later ones 204, and prints each delivery as a JSON line:
# {"id", "attempt", "verified", "status", "body"}. Its first line is its port.
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

hook = Webhook(sys.argv[1])
attempts = {}
# The server answers on a thread per request: one lock keeps the count and each printed
# line whole (two prints at once interleave on stdout).
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            hook.verify(body, headers)
            verified = True
        except Exception:  # any failure to verify is what the test looks for
            verified = False
        webhook_id = headers.get("webhook-id")
        with lock:
            attempts[webhook_id] = attempts.get(webhook_id, 0) + 1
            attempt = attempts[webhook_id]
            status = 500 if attempt == 1 else 204
            line = {
                "id": webhook_id,
                "attempt": attempt,
                "verified": verified,
                "status": status,
                "body": json.loads(body),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
