"""Command line: ``murder tracker|make-torrent|seed|peer`` and Murder's old script names.

Exit codes: 0 success, 1 download failed or timed out, 2 usage, 3 bad torrent or
payload (missing file, mismatch, no space), 4 tracker unreachable or refusing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import __version__
from .errors import LeaseError, MurderError
from .lease import DEFAULT_SECONDS, Lease

if TYPE_CHECKING:
    from .client import ClientConfig

PROG = "murder"

DESCRIPTION = """\
Fast BitTorrent-powered deploys. A tracker and a seeder hand a release to a swarm of
peers that share pieces among themselves, so a fleet fills at the speed of the
fleet, not of one file server."""


def _rate(text: str) -> float:
    """Bytes per second, with an optional k/m/g suffix (powers of 1024)."""
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower().rstrip("b/s")
    factor = mult.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in mult else value
    try:
        rate = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 50m for 50 MiB/s)") from None
    if rate < 0:
        raise argparse.ArgumentTypeError(f"rate must be >= 0, got {text!r}")
    return rate


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode must be in 000..777, got {text!r}")
    return mode


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("torrent", help="the .torrent file")
    p.add_argument("file", help="the payload: read from here (seed) or written here (peer)")
    p.add_argument("--ip", help="address to announce to the tracker (default: what it sees)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--minport", type=_port, default=10000, help="lowest listen port (10000)")
    p.add_argument("--maxport", type=_port, default=10500, help="highest listen port (10500)")
    p.add_argument(
        "--max-upload-rate",
        type=_rate,
        default=0,
        metavar="RATE",
        help="upload cap in bytes/s, k/m/g suffixes allowed (0 = none)",
    )
    p.add_argument(
        "--max-download-rate",
        type=_rate,
        default=0,
        metavar="RATE",
        help="download cap in bytes/s (0 = none)",
    )
    p.add_argument("--pidfile", help="write the PID of the process doing the work here")
    p.add_argument("--logfile", help="append log lines here instead of stderr")
    p.add_argument(
        "--tracker-timeout",
        type=float,
        default=60.0,
        metavar="SECS",
        help="fail when the tracker has not answered yet and took no connection for this "
        "long (60); a tracker that takes connections but answers late (busy with a whole "
        "fleet's announces) is waited for, up to --timeout",
    )
    p.add_argument(
        "--announce-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECS",
        help="seconds one announce may take before it is tried again (10)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _add_lease_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease",
        metavar="FILE",
        help="stop by itself (exit 0) once FILE has not been touched for --lease-seconds; "
        "whoever started us keeps touching it (fab deploy does)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=DEFAULT_SECONDS,
        metavar="SECS",
        help=f"how stale the --lease file may get ({DEFAULT_SECONDS:g})",
    )


def _lease(args: argparse.Namespace) -> Lease | None:
    if not getattr(args, "lease", None):
        return None
    if args.lease_seconds <= 0:
        raise LeaseError(f"--lease-seconds must be positive, got {args.lease_seconds:g}")
    lease = Lease(args.lease, args.lease_seconds)
    lease.check_start()
    return lease


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, minus its ``import shutil`` (3 ms, with bz2 and lzma) for
    the terminal width, paid by every command at its first add_argument."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help uses _Formatter; its subparsers are _Parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _terminal_columns() -> int:
    # What shutil.get_terminal_size() answers: $COLUMNS, else the terminal, else 80.
    with contextlib.suppress(KeyError, ValueError):
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):  # not a terminal, or not a real file
        return 80


def _add_tracker(sub: argparse._SubParsersAction[_Parser]) -> None:
    t = sub.add_parser(
        "tracker",
        help="run the HTTP tracker (foreground)",
        description="Run the HTTP tracker in the foreground until SIGTERM.",
    )
    t.add_argument("--port", type=_port, default=8998, help="listen port (8998)")
    t.add_argument("--bind", default="0.0.0.0", help="listen address (0.0.0.0)")
    t.add_argument("--dfile", help="state file, rewritten atomically, reloaded at start")
    t.add_argument("--logfile", help="append one line per announce here")
    t.add_argument(
        "--allowed-dir",
        "--allowed_dir",
        dest="allowed_dir",
        help="serve only the torrents whose .torrent files are in this directory",
    )
    t.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="INFO_HASH",
        help="serve this info_hash (hex); repeatable",
    )
    t.add_argument(
        "--interval",
        type=int,
        default=10,
        help="announce interval in seconds (10); a swarm so big that it would announce "
        "more than 250 times a second is given a longer one",
    )
    t.add_argument("--pidfile", help="write the tracker's PID here")
    _add_lease_args(t)
    t.set_defaults(func=cmd_tracker)


def _add_make_torrent(sub: argparse._SubParsersAction[_Parser]) -> None:
    mk = sub.add_parser(
        "make-torrent",
        help="hash a file or directory into a .torrent",
        description="Hash PATH into a .torrent announcing to http://HOST:PORT/announce.",
    )
    mk.add_argument("path", help="file or directory to share")
    mk.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the tracker")
    mk.add_argument(
        "-o", "--output", required=True, metavar="TARGET", help="where to write the .torrent"
    )
    mk.add_argument(
        "--piece-size",
        type=int,
        metavar="BYTES",
        help="piece size (a power of two >= 16 KiB; default: from the total size)",
    )
    mk.add_argument(
        "--auth",
        action="store_true",
        help="add a fresh random token to the announce URL: a tracker with --allowed-dir "
        "then serves this torrent only to holders of the .torrent",
    )
    mk.add_argument(
        "--mode",
        type=_mode,
        default=0o644,
        metavar="OCTAL",
        help="permissions of the .torrent (644; use 600 with --auth: it holds a secret)",
    )
    mk.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out of a directory every file or directory whose name matches GLOB, "
        "with all it holds (repeatable; e.g. '.git*' as Murder's tarball did)",
    )
    mk.add_argument(
        "--skip-symlinks",
        action="store_true",
        help="leave symlinks inside a directory out instead of refusing them (for a "
        "caller that carries them another way)",
    )
    mk.set_defaults(func=cmd_make_torrent)


def _add_seed(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = sub.add_parser(
        "seed",
        help="serve a complete payload until stopped",
        description="Serve a complete, verified payload until SIGTERM/SIGINT.",
    )
    _add_client_args(s)
    s.add_argument(
        "--lazy-check",
        action="store_true",
        help="start serving at once and check each piece against the torrent the first "
        "time it is uploaded, instead of checking the whole payload first; a piece that "
        "fails stops the seeder (exit 3). For a payload the torrent was just made from",
    )
    _add_lease_args(s)
    s.set_defaults(func=cmd_client, mode="seed")


def _add_peer(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "peer",
        help="download a payload, then seed it for --linger seconds",
        description="Download into FILE.part, verify every piece, rename to FILE and "
        "exit 0; a background process keeps seeding for --linger seconds.",
    )
    _add_client_args(p)
    p.add_argument(
        "--linger",
        type=float,
        default=30.0,
        metavar="SECS",
        help="keep seeding this long after completing, in the background (30)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECS",
        help="fail if not complete after this long (0 = wait forever)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="linger in this process instead of a background one",
    )
    p.add_argument(
        "--unpack-map",
        metavar="MAP",
        help="for a plain tarball: write the member data MAP lists (JSON, made by the "
        "deploy's seeder) straight into files under --unpack-dir; FILE then keeps only "
        "the rest (headers, padding), and extracting needs no second copy",
    )
    p.add_argument(
        "--unpack-dir",
        metavar="DIR",
        help="where --unpack-map's files go: downloaded under DIR.part, renamed to DIR "
        "just before FILE.part is renamed to FILE",
    )
    p.set_defaults(func=cmd_client, mode="peer", parser=p)


COMMANDS = {
    "tracker": _add_tracker,
    "make-torrent": _add_make_torrent,
    "seed": _add_seed,
    "peer": _add_peer,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or only ``command``'s part of it.

    Every peer of a deploy starts at the same moment, and describing all four commands
    to argparse is a few ms of each one's start, so a run of one known command
    builds that command alone; its help and errors read the same.
    """
    parser = _Parser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"murder {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, add in COMMANDS.items():
        if command is None or name == command:
            add(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, if it names one; None when it asks for the top help."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _setup_logging(verbose: bool, logfile: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO if logfile else logging.WARNING)


def _import_asyncio_without_ssl() -> None:
    """Import asyncio without the ssl module it pulls in only to offer TLS streams.

    We open no TLS stream through asyncio (an https tracker goes through urllib, which
    imports ssl itself when it needs it). ssl and its enums are about 10 ms of CPU per
    start, and a deploy starts one peer per host: sixteen hosts on two cores wait for
    each other's imports. A ``None`` in ``sys.modules`` makes ``import ssl`` fail,
    which asyncio handles; the entry is removed again so a later import finds ssl.
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
    except ImportError:
        # An asyncio that insists on ssl: forget the half-import; the caller's own
        # import then brings both.
        for name in [n for n in sys.modules if n == "asyncio" or n.startswith("asyncio.")]:
            del sys.modules[name]
    finally:
        del sys.modules["ssl"]


def cmd_tracker(args: argparse.Namespace) -> int:
    from .tracker import TrackerConfig, run_tracker

    config = TrackerConfig(
        port=args.port,
        bind=args.bind,
        dfile=args.dfile,
        logfile=args.logfile,
        allowed_dir=args.allowed_dir,
        allow=tuple(args.allow),
        interval=args.interval,
    )
    return run_tracker(config, pidfile=args.pidfile, lease=_lease(args))


def cmd_make_torrent(args: argparse.Namespace) -> int:
    from .announce import with_auth_token
    from .metainfo import announce_url, write_torrent

    # The token is made here, not passed in: a command line is visible to every user.
    url = announce_url(args.tracker)
    if args.auth:
        url = with_auth_token(url)
    meta = write_torrent(
        args.path,
        url,
        args.output,
        piece_length=args.piece_size,
        mode=args.mode,
        exclude=args.exclude,
        skip_symlinks=args.skip_symlinks,
    )
    print(meta.info_hash.hex)
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    _import_asyncio_without_ssl()
    from .client import ClientConfig
    from .daemon import pidfile, run_with_handoff

    if args.minport > args.maxport:
        raise MurderError(f"--minport {args.minport} is above --maxport {args.maxport}")
    config = ClientConfig(
        mode=args.mode,
        torrent=args.torrent,
        path=args.file,
        ip=args.ip,
        bind=args.bind,
        minport=args.minport,
        maxport=args.maxport,
        max_upload_rate=args.max_upload_rate,
        max_download_rate=args.max_download_rate,
        linger=getattr(args, "linger", 0.0),
        timeout=getattr(args, "timeout", 0.0),
        tracker_timeout=args.tracker_timeout,
        announce_timeout=args.announce_timeout,
        quiet=args.quiet,
        lazy_check=getattr(args, "lazy_check", False),
        lease=_lease(args),
        unpack_map=getattr(args, "unpack_map", None),
        unpack_dir=getattr(args, "unpack_dir", None),
    )

    def work(notify: Callable[[], None] | None) -> int:
        import asyncio  # here, not at the top: the other commands start 40 ms sooner

        with pidfile(args.pidfile):
            try:
                asyncio.run(_run_client(config, notify))
            except MurderError as exc:
                _error(exc)
                return exc.exit_code
        return 0

    if args.mode == "peer" and config.linger > 0 and not args.foreground:
        return run_with_handoff(work, logfile=args.logfile)
    return work(None)


async def _run_client(config: ClientConfig, notify: Callable[[], None] | None) -> None:
    # Built inside the running loop: on Python 3.9 asyncio objects bind to the loop
    # that exists when they are created.
    from .client import Client

    await Client(config, on_complete=notify).run()


def _error(exc: BaseException) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if (getattr(args, "unpack_map", None) is None) != (getattr(args, "unpack_dir", None) is None):
        args.parser.error("--unpack-map and --unpack-dir go together")
    _setup_logging(args.verbose, getattr(args, "logfile", None))
    try:
        return int(args.func(args))
    except MurderError as exc:
        _error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _error(KeyboardInterrupt("interrupted"))
        return 130


# -- Murder's (2010) command lines, kept working for scripts written against them -------
def legacy_tracker(argv: Sequence[str] | None = None) -> int:
    """``murder_tracker.py --port 8998 --dfile data --logfile f``"""
    return main(["tracker", *(sys.argv[1:] if argv is None else argv)])


def legacy_make_torrent(argv: Sequence[str] | None = None) -> int:
    """``murder_make_torrent.py FILE HOST:PORT TARGET``"""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] in ("-h", "--help"):
        print("usage: murder_make_torrent.py FILE TRACKER_HOST:PORT TARGET", file=sys.stderr)
        return 2
    path, tracker, target, *rest = args
    return main(["make-torrent", path, "--tracker", tracker, "-o", target, *rest])


def legacy_client(argv: Sequence[str] | None = None) -> int:
    """``murder_client.py peer|seed TORRENT FILE IP``"""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] not in ("peer", "seed"):
        print("usage: murder_client.py peer|seed TORRENT FILE IP [options]", file=sys.stderr)
        return 2
    mode, torrent, path, ip, *rest = args
    return main([mode, torrent, path, "--ip", ip, *rest])


LEGACY = {
    "murder_tracker.py": legacy_tracker,
    "murder_make_torrent.py": legacy_make_torrent,
    "murder_client.py": legacy_client,
}


def main_from_zipapp() -> int:
    """``python3 murder.pyz ...``; the first argument may be one of Murder's script names."""
    args = sys.argv[1:]
    if args and os.path.basename(args[0]) in LEGACY:
        return LEGACY[os.path.basename(args[0])](args[1:])
    return main(args)


if __name__ == "__main__":
    sys.exit(main())
