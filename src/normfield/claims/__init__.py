"""The claim registry: one small function per paper claim -> verdict + figure.

Claim modules live beside this file and register themselves with
:func:`normfield.claims.registry.claim`; :func:`all_claims` discovers them.
"""

from normfield.claims.registry import (
    ClaimContext,
    ClaimResult,
    ClaimSpec,
    all_claims,
    claim,
    get_claim,
    run_claims,
)

__all__ = ["ClaimContext", "ClaimResult", "ClaimSpec", "all_claims", "claim", "get_claim", "run_claims"]
