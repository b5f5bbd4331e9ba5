"""``enroll bench``: a load generator for EST and SCEP servers, a side-by-side comparison with
micromdm's scepserver, and a ledger seeder for scale measurements.

The generator runs in its own process (never inside the server), pre-builds every request
before the clock starts, and judges the answers (status, serial numbers) after the clock stops,
so what it measures is the server, not itself. It reads the server's CPU time and memory from
``/proc/<pid>`` (the process and its live descendants, i.e. ``--workers``).
"""
