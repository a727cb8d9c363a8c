"""The one file we ship: murder.pyz runs on a bare python3 with nothing installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from murder_dev.build import build_pyz
from murder_dev.localswarm import LocalSwarm, make_payload, sha256

pytestmark = pytest.mark.slow


def _interpreters() -> list[str]:
    found = ["python3"]
    # Python 3.9 is the oldest we promise; test it where this machine has one (pyenv).
    for cand in (shutil.which("python3.9"), "/root/.pyenv/versions/3.9.18/bin/python3.9"):
        if cand and Path(cand).exists():
            probe = subprocess.run(
                [cand, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0 and "(3, 9)" in probe.stdout:
                found.append(cand)
                break
    return found


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pyz(tmp_path_factory.mktemp("dist") / "murder.pyz")


def _bare_python(base: str, where: Path) -> str:
    """A virtualenv with nothing installed, made from ``base``."""
    if base == "python3":
        venv.EnvBuilder(with_pip=False).create(where)
    else:
        subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    out = subprocess.run([str(python), "-c", "import bencodepy"], capture_output=True)
    assert out.returncode != 0, "the bare venv must not have bencodepy: the pyz has to carry it"
    return str(python)


@pytest.mark.parametrize("base", _interpreters())
def test_pyz_swarm_on_a_bare_python(base: str, pyz: Path, tmp_path: Path) -> None:
    python = _bare_python(base, tmp_path / "venv")
    version = subprocess.run([python, "-I", str(pyz), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("murder "), version.stderr
    payload = make_payload(tmp_path / "app.tgz", 3 * 1024 * 1024 + 7)
    with LocalSwarm(tmp_path / "run", payload, pyz=pyz, python=python) as sw:
        sw.start_tracker()
        sw.make_torrent()
        sw.start_seeder()
        sw.start_peer("p1", tmp_path / "p1" / "app.tgz", "--linger", "0")
        assert sw.wait(["p1"], timeout=120) == {"p1": 0}, sw.log("p1")
    assert sha256(tmp_path / "p1" / "app.tgz") == sha256(payload)


def test_legacy_shims_next_to_the_pyz(pyz: Path, tmp_path: Path) -> None:
    python = _bare_python("python3", tmp_path / "venv")
    payload = make_payload(tmp_path / "f.bin", 100_000)
    target = tmp_path / "f.torrent"
    shim = pyz.parent / "murder_make_torrent.py"
    out = subprocess.run(
        [python, str(shim), str(payload), "127.0.0.1:8998", str(target)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 40  # the info_hash, in hex
    help_out = subprocess.run(
        [python, str(pyz.parent / "murder_client.py")], capture_output=True, text=True
    )
    assert help_out.returncode == 2
    assert "usage: murder_client.py peer|seed TORRENT FILE IP" in help_out.stderr
    via_pyz = subprocess.run(
        [
            python,
            str(pyz),
            "murder_make_torrent.py",
            str(payload),
            "127.0.0.1:8998",
            str(tmp_path / "g.torrent"),
        ],
        capture_output=True,
    )
    assert via_pyz.returncode == 0
    assert (tmp_path / "g.torrent").read_bytes() == target.read_bytes()


def test_pyz_holds_no_source_tree_paths(pyz: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names
    assert "murder_core/cli.py" in names and "bencodepy/__init__.py" in names
    assert "tqdm/__init__.py" in names
    assert not [n for n in names if n.endswith(".so") or "__pycache__" in n]
    # Bytecode beside every module, where zipimport looks, so no start compiles anything.
    sources = {n[:-3] for n in names if n.endswith(".py")}
    assert sources == {n[:-4] for n in names if n.endswith(".pyc")}
    # Stored, not deflated: each start would inflate every module it imports.
    assert {i.compress_type for i in zipfile.ZipFile(pyz).infolist()} == {zipfile.ZIP_STORED}
    assert sys.version_info >= (3, 9)


def test_pyz_bytecode_is_used_and_names_no_build_paths(pyz: Path) -> None:
    """A matching interpreter loads the .pyc (compiling nothing) and its code objects name
    the module inside the archive, not the tree the build ran in."""
    import zipimport

    code = zipimport.zipimporter(f"{pyz}/murder_core/").get_code("session")
    assert code.co_filename == "murder_core/session.py"


_SILENT_TRACKER = """
import asyncio, sys
from murder_core import announce
from murder_core.errors import TrackerError

async def main():
    async def silent(reader, writer):
        await asyncio.sleep(5)
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await announce.fetch_async("http://127.0.0.1:%d/announce" % port, 0.3)
    except TrackerError as exc:
        print(exc)
    finally:
        server.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("base", _interpreters())
def test_a_silent_tracker_is_a_tracker_error_on_every_python(base: str, pyz: Path) -> None:
    """Before 3.11 asyncio's timeout is not the builtin TimeoutError: it must still be
    reported as an unreachable tracker, not escape the announcer."""
    out = subprocess.run(
        [base, "-I", "-c", f"import sys; sys.path.insert(0, {str(pyz)!r})\n{_SILENT_TRACKER}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "is busy: connected, but no reply within 0.3 s" in out.stdout


_PEER_IMPORTS_THEN_HTTPS = """
import sys
assert "ssl" not in sys.modules
from murder_core import cli
cli._import_asyncio_without_ssl()
import murder_core.client
print("ssl after the peer's imports:", "ssl" in sys.modules)
from murder_core.announce import fetch
from murder_core.errors import TrackerError
try:
    fetch("https://127.0.0.1:%s/announce" % sys.argv[1], 10)
except TrackerError as exc:
    print(exc)
"""


@pytest.mark.parametrize("base", _interpreters())
def test_peer_start_skips_ssl_and_https_trackers_still_work(
    base: str, pyz: Path, tmp_path: Path
) -> None:
    """A peer imports asyncio without ssl (10 ms of every start); an https announce later
    imports ssl after all and really speaks TLS: our self-signed tracker is refused for
    its certificate, not for a missing module."""
    import socket
    import ssl
    import threading

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    handshakes: list[str] = []

    def serve() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        try:
            with context.wrap_socket(raw, server_side=True):
                handshakes.append("completed")
        except (ssl.SSLError, OSError) as exc:  # the client refuses our certificate
            handshakes.append(type(exc).__name__)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        script = f"import sys; sys.path.insert(0, {str(pyz)!r})\n{_PEER_IMPORTS_THEN_HTTPS}"
        port = str(listener.getsockname()[1])
        out = subprocess.run(
            [base, "-I", "-c", script, port], capture_output=True, text=True, timeout=60
        )
    finally:
        server.join(30)
        listener.close()
    assert out.returncode == 0, out.stderr
    assert "ssl after the peer's imports: False" in out.stdout, out.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in out.stdout, out.stdout
    assert handshakes and handshakes[0] != "completed", handshakes
