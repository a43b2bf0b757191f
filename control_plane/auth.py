"""API keys: when configured, every request must carry `Authorization: Bearer <key>`. Keys are
compared in constant time and never logged."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...] = ()

    @staticmethod
    def from_env_and_flags(flag_keys: list[str] | None) -> ApiKeys:
        env = [k.strip() for k in os.environ.get("DUET_API_KEYS", "").split(",") if k.strip()]
        return ApiKeys(tuple([*(flag_keys or []), *env]))

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def allows(self, authorization: str | None) -> bool:
        if not self.keys:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization[len("Bearer ") :].strip().encode()
        # Compare against every key so the time does not depend on which one matched.
        matches = [hmac.compare_digest(given, k.encode()) for k in self.keys]
        return any(matches)

    def __repr__(self) -> str:  # never print the keys
        return f"ApiKeys({len(self.keys)} keys)"
