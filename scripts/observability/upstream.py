"""A JSON upstream for scripts/check-observability.sh: `upstream.py NAME PORTFILE`.

Listens on an ephemeral loopback port (written to PORTFILE). The legacy and modern sides answer
the same body except on paths ending in an odd digit, where modern differs: shadow comparisons
then see both matches and mismatches.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        version = 2 if NAME == "modern" and path[-1:] in "13579" else 1
        body = json.dumps({"path": path, "version": version}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[2], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
