"""Run troupe as a service: ``python examples/server.py [--host H] [--port P] [--config FILE]``.

Settings come from the TOML file given with ``--config``, then from
``TROUPE_*`` environment variables; the flags win over both. With no
settings at all it runs the simulated model on a SQLite store in ``./data``
and prints a development token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actors.config import ConfigError, load_config
from actors.http.server import run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            config = config.with_overrides(**overrides)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    run_server(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
