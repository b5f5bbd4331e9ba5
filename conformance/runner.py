"""Runs a suite's checks one after the other (never concurrently: the suite sends no load),
with a per-check time limit, and turns every outcome into a Result."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from conformance.model import Fail, Interop, Result, Skip, Suite, Verdict

Progress = Callable[[int, int, Result], None]


class BaseContext:
    """State shared by the checks of one run: memoised *steps* (an enrollment made once and
    judged by many checks) and the list of enrollments the run will make."""

    def __init__(self) -> None:
        self._steps: dict[str, tuple[str, Any]] = {}

    async def step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once; later calls return its value or re-raise its Fail/Skip."""
        if name not in self._steps:
            try:
                self._steps[name] = ("ok", await fn())
            except (Fail, Skip) as exc:
                self._steps[name] = ("err", exc)
        kind, value = self._steps[name]
        if kind == "ok":
            return value
        raise value

    async def need(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Like :meth:`step`, but a failed prerequisite makes the calling check a skip."""
        try:
            return await self.step(name, fn)
        except Fail as exc:
            raise Skip(f"prerequisite '{name}' failed: {exc.detail}") from None


async def run_suite(suite: Suite, ctx: Any, progress: Progress | None = None,
                    only: Callable[[str], bool] | None = None, check_timeout: float = 60.0) -> list[Result]:
    """Judge every check of ``suite`` in order."""
    checks = [c for c in suite.checks if only is None or only(c.id)]
    results: list[Result] = []
    for i, chk in enumerate(checks, 1):
        start = time.monotonic()
        try:
            detail = await asyncio.wait_for(chk.fn(ctx), check_timeout)
            res = Result(chk.id, chk.title, chk.requirement, Verdict.PASS, detail or "ok")
        except Fail as exc:
            res = Result(chk.id, chk.title, chk.requirement, Verdict.FAIL, exc.detail, exc.evidence)
        except Skip as exc:
            res = Result(chk.id, chk.title, chk.requirement, Verdict.SKIP, exc.reason)
        except Interop as exc:
            res = Result(chk.id, chk.title, chk.requirement, Verdict.INTEROP, exc.detail, exc.evidence,
                         breaks=exc.breaks, works=exc.works)
        except TimeoutError:
            res = Result(chk.id, chk.title, chk.requirement, Verdict.FAIL,
                         f"no answer within {check_timeout:.0f} s")
        except Exception as exc:  # noqa: BLE001 - an unreadable answer is the server's failure
            tb = traceback.format_exception(exc)[-3:]
            res = Result(chk.id, chk.title, chk.requirement, Verdict.FAIL,
                         f"could not judge the reply: {type(exc).__name__}: {exc}",
                         [ln.rstrip() for t in tb for ln in t.splitlines()][-6:])
        res.duration_ms = int((time.monotonic() - start) * 1000)
        results.append(res)
        if progress:
            progress(i, len(checks), res)
    return results
