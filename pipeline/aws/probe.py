"""The secret that lets the health gate, and nobody else, reach one colour through the load balancer.

The health gate probes a colour before it takes traffic, through the load balancer (the instances
admit only the load balancer). The listener's probe rules forward to one colour a request that carries
``X-Pipeline-Color: <colour>`` **and** ``X-Pipeline-Probe: <token>``; without the token a request goes
by the weighted rule like any other, so nobody who can reach the load balancer can call a build that
was never released.

Decided against a source condition (``source-ip`` of the machine running the pipeline): its public
address is not known to the pipeline (NAT, CI runners, VPNs), and a wrong guess would shut the gate
out. The token instead:

- is a 128-bit random value kept in the stack's ``ProbeToken`` parameter, where a later run (a
  rollback, a resumed deploy) reads it back. Whoever may call ``cloudformation:DescribeStacks`` in the
  account can read it: such a principal can change the stack itself, so it guards nothing from them;
- is per release: a stack update that gives a colour another image or build gets a new token, an
  update that only moves weights or capacity keeps the current one (:func:`with_token`);
- is never printed (parameter diffs leave it out).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence

from pipeline.aws.tags import COLORS

COLOR_HEADER = "X-Pipeline-Color"  # which colour a probe is for
PARAMETER = "ProbeToken"
HEADER = "X-Pipeline-Probe"  # the token: without it the colour header is ignored
PATTERN = "^[0-9a-f]{32}$"
# The parameters that say which release each colour runs: when one changes, the token changes.
RELEASE_KEYS = tuple(f"{c.capitalize()}{f}" for c in COLORS for f in ("ImageId", "BuildId"))


def new_token() -> str:
    return secrets.token_hex(16)


def with_token(
    parameters: Sequence[Mapping[str, str]],
    current: Mapping[str, str] | None,
    new: Callable[[], str] = new_token,
) -> list[dict[str, str]]:
    """``parameters`` plus ``ProbeToken``: the stack's ``current`` token while every colour keeps its
    release, a new one when a colour gets another (or the stack has none yet, ``current`` None)."""
    values = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
    token = (current or {}).get(PARAMETER, "")
    same = current is not None and all(values.get(k) == current.get(k) for k in RELEASE_KEYS)
    if not (same and re.fullmatch(PATTERN, token)):
        token = new()
    values[PARAMETER] = token
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]


def headers(color: str, token: str) -> dict[str, str]:
    """What a probe of ``color`` sends so that the load balancer forwards it to that colour."""
    return {COLOR_HEADER: color, HEADER: token}
