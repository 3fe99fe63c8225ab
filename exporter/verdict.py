"""What the kernel does with a flow, or what it must do: the one verdict type from the evaluator to
the JSON output.

A StrEnum, so a verdict is its own string ("allow", "deny", "unknown") in JSON, text and metric
labels: the output contract stays plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    UNKNOWN = "unknown"
