"""The demo app as a Python server: a non-JVM app for nonstop's tests.

The JVM unblocks its own signals, so a demo jar takes SIGTERM even when the
process that launched it had SIGTERM blocked; a Python (Go, Node) server does
not. This one keeps Demo.java's contract (examples/demo-app) but for
kept-alive connections (it speaks HTTP/1.0: a connection per request, so
its shutdown has no idle connection to close), with the options as Spring
Boot's command-line arguments instead of -D properties:

- GET /profile answers the active profile (--spring.profiles.active=NAME);
- it listens on --server.port=PORT, else on its profile's port (real1 8081,
  real2 8082, else 8080), on 127.0.0.1;
- GET / answers "demo VERSION PROFILE", VERSION coming from version.txt
  packed beside this file in the app's zip (`python3 -m zipapp`), as the
  jar carries it; "unknown" when run as a bare script;
- GET /slow?ms=N answers "slow N VERSION PROFILE" after N milliseconds (a
  request in flight during a switch), and logs that it began;
- --demo.startup.delay.ms=N waits N ms before it listens (a slow start-up);
- on SIGTERM it logs that it got it, closes its listening socket, finishes
  the requests in flight (at most 30 s) and exits 0.

Fault knobs, as the jar's: --demo.exit.at.startup=CODE exits after the
start-up delay, --demo.ignore.term=true ignores SIGTERM, --demo.answer=TEXT
answers /profile with TEXT.

Standard library only; stdout is flushed at every line, as it goes to a log
file that tests and operators read while the app runs.
"""

import http.server
import os
import pkgutil
import signal
import sys
import threading
import time
import urllib.parse

PORTS = {"real1": 8081, "real2": 8082}


def say(text):
    print("demo: " + text, flush=True)


def options(argv):
    """`--key=value` arguments as a dict; anything else is ignored, as Spring does."""
    found = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            found[key] = value
    return found


def read_version():
    # Inside the zip: the module's loader reads its neighbour. As a bare
    # script: the file beside it, if any.
    try:
        data = pkgutil.get_data(__name__, "version.txt")
        if data is not None:
            return data.decode("utf-8").strip()
    except (OSError, ValueError, ImportError):
        pass
    try:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


class InFlight:
    """Counts requests from their first byte to their last."""

    def __init__(self):
        self.count = 0
        self.cond = threading.Condition()

    def __enter__(self):
        with self.cond:
            self.count += 1

    def __exit__(self, *exc):
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def drain(self, limit):
        with self.cond:
            return self.cond.wait_for(lambda: self.count == 0, timeout=limit)


def handler(profile, answer, version, in_flight):
    class Handler(http.server.BaseHTTPRequestHandler):
        def respond(self, body):
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with in_flight:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/profile":
                    self.respond(answer)
                elif url.path == "/slow":
                    query = urllib.parse.parse_qs(url.query)
                    try:
                        ms = int(query.get("ms", ["2000"])[0])
                    except ValueError:
                        ms = 2000
                    say("slow request for %d ms began" % ms)
                    time.sleep(ms / 1000.0)
                    self.respond("slow %d %s %s" % (ms, version, profile))
                else:
                    self.respond("demo %s %s" % (version, profile))

        def log_message(self, format, *args):
            # One line per request would fill the log under load.
            pass

    return Handler


class Server(http.server.ThreadingHTTPServer):
    # A backlog like the jar's, so a burst through nginx is queued, not refused.
    request_queue_size = 512


def main():
    opts = options(sys.argv[1:])
    profile = opts.get("spring.profiles.active", "default")
    port = int(opts.get("server.port", PORTS.get(profile, 8080)))
    answer = opts.get("demo.answer", profile)
    version = read_version()

    if opts.get("demo.ignore.term") == "true":
        signal.signal(signal.SIGTERM, lambda *_: say("ignoring SIGTERM"))
    delay = int(opts.get("demo.startup.delay.ms", "0"))
    if delay > 0:
        say("starting up for %d ms" % delay)
        time.sleep(delay / 1000.0)
    if "demo.exit.at.startup" in opts:
        code = opts["demo.exit.at.startup"]
        print("demo: exiting at start-up as asked (demo.exit.at.startup=%s)" % code,
              file=sys.stderr, flush=True)
        sys.exit(int(code))

    in_flight = InFlight()
    server = Server(("127.0.0.1", port), handler(profile, answer, version, in_flight))

    def on_term(signum, frame):
        say("SIGTERM received: closing the listener, finishing %d request(s) in flight"
            % in_flight.count)
        # shutdown() waits for serve_forever(), which runs in this very
        # thread under this handler: ask from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    if opts.get("demo.ignore.term") != "true":
        signal.signal(signal.SIGTERM, on_term)
    say("%s (%s) listening on 127.0.0.1:%d" % (version, profile, port))
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    drained = in_flight.drain(30.0)
    say("drained, exiting" if drained else "requests still in flight after 30 s, exiting")
    sys.exit(0)


if __name__ == "__main__":
    main()
