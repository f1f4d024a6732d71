"""A small IAM policy evaluator: stands in for AWS's evaluation of identity policies, which cannot run
here (moto's IAM enforcement matches actions only: it ignores resources and cannot evaluate the
conditions the pipeline's policies rely on).

It follows the documented rules:

- evaluation logic (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
  an explicit Deny wins; otherwise a request is allowed when an Allow statement matches its action,
  its resource and every one of its conditions; otherwise it is implicitly denied;
- ``Action`` and ``Resource`` (reference_policies_elements_action.html, _resource.html): ``*`` and
  ``?`` wildcards, actions case-insensitive, resources case-sensitive;
- ``Condition`` (reference_policies_elements_condition_operators.html,
  reference_policies_condition-single-vs-multi-valued-context-keys.html): every operator of a
  block and every key of an operator must hold; several values of one key are alternatives (OR);
  a key missing from the request makes a condition false, except for the negated operators
  (``StringNotEquals``, ``ArnNotEquals``, ...) where it makes it true; ``Null`` tests presence;
  ``ForAllValues:`` holds when every value of the request's key matches (and when the key is
  missing or empty); ``ForAnyValue:`` when at least one does (false when the key is missing);
  ``...IfExists`` holds when the key is missing. Condition key names are case-insensitive.

Each :class:`Request` is one authorization: an action on one resource, with the condition keys
the request carries (``aws:ResourceTag/K`` for the tags the resource has, ``aws:RequestTag/K`` and
``aws:TagKeys`` for the tags it sets, ``ec2:CreateAction``, ``aws:CalledVia``, ...). A call that
touches several resources (RegisterImage: the new image and the snapshot) is one request per resource,
as AWS authorizes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

Decision = Literal["allowed", "denied", "explicitly denied"]
Value = str | Sequence[str]

_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, Value] = field(default_factory=dict)


def tags_context(
    resource: Mapping[str, str] | None = None,
    request: Mapping[str, str] | None = None,
    extra: Mapping[str, Value] | None = None,
) -> dict[str, Value]:
    """The context keys of a resource's tags (``aws:ResourceTag/K``), of the tags a request sets
    (``aws:RequestTag/K`` and ``aws:TagKeys``), and ``extra`` keys."""
    out: dict[str, Value] = {f"aws:ResourceTag/{k}": v for k, v in (resource or {}).items()}
    out.update({f"aws:RequestTag/{k}": v for k, v in (request or {}).items()})
    if request:
        out["aws:TagKeys"] = sorted(request)
    out.update(extra or {})
    return out


def decide(policy: Mapping[str, Any], request: Request) -> Decision:
    allowed = False
    for st in _as_list(policy["Statement"]):
        if not _applies(st, request):
            continue
        if st["Effect"] == "Deny":
            return "explicitly denied"
        allowed = True
    return "allowed" if allowed else "denied"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _applies(st: Mapping[str, Any], r: Request) -> bool:
    if "Action" in st and not any(_like(a.lower(), r.action.lower()) for a in _as_list(st["Action"])):
        return False
    if "NotAction" in st and any(_like(a.lower(), r.action.lower()) for a in _as_list(st["NotAction"])):
        return False
    if "Resource" in st and not any(_like(p, r.resource) for p in _as_list(st["Resource"])):
        return False
    if "NotResource" in st and any(_like(p, r.resource) for p in _as_list(st["NotResource"])):
        return False
    return all(
        _holds(op, key, values, r.context)
        for op, keys in st.get("Condition", {}).items()
        for key, values in keys.items()
    )


def _like(pattern: str, value: str) -> bool:
    return fnmatchcase(value, pattern.replace("[", "[[]"))


def _lookup(context: Mapping[str, Value], key: str) -> list[str] | None:
    for k, v in context.items():
        if k.lower() == key.lower():
            return [v] if isinstance(v, str) else list(v)
    return None


def _holds(operator: str, key: str, wanted: Any, context: Mapping[str, Value]) -> bool:
    values = [str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)]
    present = _lookup(context, key)
    qualifier, _, op = operator.rpartition(":")
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    if op == "Null":
        return (present is None) == (values[0] == "true")
    if present is None and if_exists:
        return True
    negated = op in _NEGATED
    positive = op.replace("Not", "", 1) if negated else op

    def one(v: str) -> bool:
        hit = any(_compare(positive, v, w) for w in values)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in present or [])
    if qualifier == "ForAnyValue":
        return any(one(v) for v in present or [])
    if present is None:
        return negated
    return any(one(v) for v in present) if not negated else all(one(v) for v in present)


def _compare(op: str, value: str, wanted: str) -> bool:
    if op in ("StringEquals", "ArnEquals"):
        return value == wanted if op == "StringEquals" else _like(wanted, value)
    if op == "StringEqualsIgnoreCase":
        return value.lower() == wanted.lower()
    if op in ("StringLike", "ArnLike"):
        return _like(wanted, value)
    if op == "Bool":
        return value.lower() == wanted.lower()
    raise ValueError(f"condition operator {op} is not one this evaluator knows")
