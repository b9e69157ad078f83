"""The shapes of the settings given as JSON (RATE_LIMIT_TIERS, TOKEN_PACKS).

Each parser takes the decoded JSON and returns it checked, or raises ValueError naming the
entry that is wrong; embeddings_site.env.env_json puts the variable's name in front.
"""

from __future__ import annotations

import re

TIER_LIMITS = ("rpm", "tpm", "concurrency")
TOKEN_PACK_FIELDS = ("id", "name", "tokens", "amount", "currency")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


def _positive_int(value: object, where: str) -> int:
    # bool is an int to Python; `true` is no limit.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} must be a positive integer, not {value!r}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, not {value!r}")
    return value


def _fields(entry: dict[str, object], fields: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown} (known: {', '.join(fields)})")
    missing = [field for field in fields if field not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")


def rate_limit_tiers(value: object) -> dict[str, dict[str, int]]:
    """{tier: {"rpm", "tpm", "concurrency"}}, each a positive integer."""
    if not isinstance(value, dict):
        raise ValueError(
            f'must be an object of tiers, e.g. {{"free": {{"rpm": 60, ...}}}}, not {value!r}'
        )
    tiers: dict[str, dict[str, int]] = {}
    for tier, limits in value.items():
        where = f"tier {tier!r}"
        if not isinstance(limits, dict):
            raise ValueError(f"{where} must be an object of {', '.join(TIER_LIMITS)}")
        _fields(limits, TIER_LIMITS, where)
        tiers[tier] = {
            name: _positive_int(limits[name], f"{where}: {name}") for name in TIER_LIMITS
        }
    return tiers


def token_packs(value: object) -> list[dict[str, object]]:
    """[{"id", "name", "tokens", "amount", "currency"}] with unique ids; tokens and amount (in
    the currency's minor unit) positive, currency a three-letter ISO code."""
    if not isinstance(value, list):
        raise ValueError(f"must be a list of packs, not {value!r}")
    packs: list[dict[str, object]] = []
    seen: set[str] = set()
    for index, pack in enumerate(value):
        where = f"pack {index}"
        if not isinstance(pack, dict):
            raise ValueError(f"{where} must be an object of {', '.join(TOKEN_PACK_FIELDS)}")
        if isinstance(pack.get("id"), str):
            where = f"pack {pack['id']!r}"
        _fields(pack, TOKEN_PACK_FIELDS, where)
        pack_id = _text(pack["id"], f"{where}: id")
        if pack_id in seen:
            raise ValueError(f"{where}: id is used by an earlier pack")
        seen.add(pack_id)
        currency = pack["currency"]
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise ValueError(
                f"{where}: currency must be a three-letter code such as usd, not {currency!r}"
            )
        packs.append(
            {
                "id": pack_id,
                "name": _text(pack["name"], f"{where}: name"),
                "tokens": _positive_int(pack["tokens"], f"{where}: tokens"),
                "amount": _positive_int(pack["amount"], f"{where}: amount"),
                "currency": currency,
            }
        )
    return packs
