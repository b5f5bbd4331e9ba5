"""Long CLI work shows progress (issue 17): the load generator reports answered/failed/rate
while a run is under way; `enroll backup` says what it copies (tests/enroll/test_backup.py)."""

from __future__ import annotations

import asyncio

from enroll.bench import load


async def test_load_run_reports_progress_while_answers_are_outstanding() -> None:
    lines: list[str] = []
    release = asyncio.Event()

    async def slow_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            await release.wait()  # answers held back until progress was reported
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def progress(line: str) -> None:
        lines.append(line)
        if len(lines) >= 2:
            release.set()

    jobs = [load.Job(load.build_request("GET", "/", f"127.0.0.1:{port}")) for _ in range(3)]
    try:
        async with asyncio.timeout(30):
            stats = await load.run(jobs, endpoints=lambda i: load.Endpoint("127.0.0.1", port), concurrency=1,
                                   progress=progress, progress_every=0.02)
    finally:
        server.close()
        await server.wait_closed()
    assert [a.status for a in stats.answers] == [200, 200, 200]
    assert lines[0].startswith("0/3 answered, 0 failed")


def test_crl_of_a_large_ledger_shows_progress(embedded) -> None:  # type: ignore[no-untyped-def]
    """`enroll crl --force` on a ledger with 12,000 revoked entries reports its steps on stderr."""
    import subprocess
    import sys

    from enroll.bench.seed import seed
    from enroll.config import load_config

    seed(load_config(embedded.config_path).ledger_url, 12_000, 12_000)
    res = subprocess.run([sys.executable, "-m", "enroll", "-c", str(embedded.config_path), "crl", "--force",
                          "--der", "--out", str(embedded.config_path.parent / "big.crl")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "crl: entries 0/12000" in res.stderr and "crl: entries 10000/12000" in res.stderr
    assert "crl: signing 12000/12000" in res.stderr
