"""The ceiling: a bare aiohttp endpoint on uvloop that reads the body and returns a constant one.

Same web stack as the gateway, no work behind it, so its throughput is the most any aiohttp
gateway could serve on this machine with this generator; the gap to the gateway is the
gateway's own cost.

    python -m loadtests.ceiling --port 18080
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson
from aiohttp import web

BODY = orjson.dumps({"model_name": "ceiling", "model_version": "1", "id": "constant", "outputs": [
    {"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}]})


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", _answer)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"ceiling listening on http://{host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m loadtests.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
