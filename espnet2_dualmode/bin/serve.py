"""Serve one dual-mode model: streaming over WebSocket, whole files over HTTP, a browser page.

Usage:
    python -m espnet2_dualmode.bin.serve \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.loss.ave.pth \
        --host 127.0.0.1 --port 8000 --beam_size 10

Then open http://127.0.0.1:8000/ (microphone page), stream to ws://HOST:PORT/ws/stream
(protocol: :mod:`espnet2_dualmode.serving.protocol`) or POST a file to
http://HOST:PORT/recognize?head=attention. ``--port 0`` takes a free port; the first
line on stdout is ``serving on http://HOST:PORT/``. Every stream is cut into segments by
the endpoint rules ``--trailing_silence_after_token 0.8 --trailing_silence_no_token 5
--max_segment 20`` (the longform CLI's options and defaults; a client may set its own in
its start message).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import List, Optional

from aiohttp import web

from espnet2_dualmode.inference.cli import (
    add_device_argument,
    add_geometry_arguments,
    device_of,
    geometry_of,
)
from espnet2_dualmode.inference.endpoint import (
    EndpointRules,
    add_two_pass_margin_argument,
    check_two_pass_margin,
)
from espnet2_dualmode.inference.offline import HEADS
from espnet2_dualmode.serving.app import create_app
from espnet2_dualmode.serving.engine import Engine


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="the training run's config.yaml")
    p.add_argument("--asr_model_file", required=True, help="model weights (.pth)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    add_device_argument(p)
    add_geometry_arguments(p)
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--nbest", type=int, default=1, help="most hypotheses a client may ask for")
    p.add_argument("--max_sym_per_frame", type=int, default=10)
    EndpointRules.add_arguments(p)  # a client may override them per stream
    add_two_pass_margin_argument(p)
    p.add_argument("--preload_heads", nargs="*", default=[], choices=HEADS,
                   help="offline heads to build at start (others are built on first use)")
    p.add_argument("--record_dir", type=Path, default=None,
                   help="write each stream's received audio here as <session>.wav")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the kernel picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(app: web.Application, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until cancelled."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(cmd)
    try:
        rules = EndpointRules.from_args(args)
        check_two_pass_margin(args.two_pass_margin)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    engine = Engine(args.asr_train_config, args.asr_model_file, beam_size=args.beam_size,
                    nbest=args.nbest, max_sym_per_frame=args.max_sym_per_frame,
                    device=device_of(args), geometry=geometry_of(args),
                    preload_heads=args.preload_heads, rules=rules,
                    two_pass_margin=args.two_pass_margin)
    if args.record_dir is not None:
        args.record_dir.mkdir(parents=True, exist_ok=True)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"serving on http://{host}:{port}/", flush=True)
    try:
        asyncio.run(serve(create_app(engine, args.record_dir), sock))
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()


if __name__ == "__main__":
    main(sys.argv[1:])
