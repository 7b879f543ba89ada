"""One wording for a run refused because a protection layer is missing on this machine.

fence fails closed: when a layer the policy depends on cannot be applied here
(no network namespace, no seccomp user notification for the argv policy), the
run stops instead of quietly running with less.  The user then needs three
things from the message, always in the same places: which layer is missing
and why, what in the policy needed it, and which setting lets the run go on
with less protection (and what that costs).  Pure text, no imports: the init
helper (stdlib only, inside the sandbox) spells the same shape itself, and a
test holds the two to it.
"""

from __future__ import annotations


def missing_layer(layer: str, why: str, needed_by: str, setting: str, less: str, instead: str = "") -> str:
    """``<layer> unavailable here (<why>): <needed_by>. Refusing to run. To run with less protection:
    <setting> (<less>)[; or <instead>]``."""
    return (
        f"{layer} unavailable here ({why}): {needed_by}. Refusing to run. "
        f"To run with less protection: {setting} ({less}){'; or ' + instead if instead else ''}"
    )


ARGV_LAYER = "seccomp user notification"
ARGV_NEEDED_BY = 'command.runtimeExecPolicy "argv" needs it to check every exec'
ARGV_SETTING = 'set command.runtimeExecPolicy to "path", the default'
ARGV_LESS = "while the command runs, only the programs that single-token deny rules name are masked"


def argv_unavailable(why: str) -> str:
    """The argv policy cannot run here: the kernel, the architecture, or the filter chain lacks user notification."""
    return missing_layer(ARGV_LAYER, why, ARGV_NEEDED_BY, ARGV_SETTING, ARGV_LESS)
