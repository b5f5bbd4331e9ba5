"""``python -m conformance est|scep URL ...``"""

from conformance.cli import conformance

conformance(prog_name="python -m conformance")
