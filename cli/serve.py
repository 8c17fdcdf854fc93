"""`comfyui-flux2 serve-loopback runware|bfl`: a loopback provider server for manual tries."""
from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    serve = sub.add_parser("serve-loopback", help="run a loopback provider server for manual tries")
    serve.add_argument("provider", choices=("runware", "bfl"), help="which provider's protocol to serve")
    serve.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    serve.add_argument("--key", default="loopback-key", help="the API key the server accepts")
    serve.set_defaults(handler=command)


def command(args) -> int:
    if args.provider == "runware":
        from ..loopback.runware_server import RunwareLoopback as Server
        env = "RUNWARE"
    else:
        from ..loopback.bfl_server import BflLoopback as Server
        env = "BFL"
    server = Server(port=args.port, api_key=args.key).start()
    print(f"export {env}_API_URL={server.api_url} {env}_API_KEY={args.key}")
    print("serving on 127.0.0.1; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0
