"""Sample CRM records (accounts, contacts, opportunities, activities) for the demo and tests.

Records carry what Clari's contract requires (``id``, ``createdAt``, ``updatedAt`` in epoch
milliseconds) and a little of everything real CRM data has: nested objects, arrays,
nulls, and non-ASCII text.
"""

from __future__ import annotations

import random
from typing import Any

NAMES = [
    "Zoë Brontë",
    "José Müller",
    "Åsa Lindqvist",
    "李雷",
    "Ngozi Okafor",
    "Renée Dubois",
    "Søren Kierkegaard",
    "Priya Raman",
    "Łukasz Wójcik",
    "Ahmed Al-Farsi",
]
COMPANIES = [
    "Acme Crédit",
    "Globex Straße",
    "Initech",
    "Umbrella Ltd",
    "Stark Industries",
    "Wayne Enterprises",
    "Tyrell Corp",
    "株式会社サンプル",
    "Soylent Ωmega",
]
STAGES = ["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost"]
BASE_MS = 1_700_000_000_000


def crm_record(entity: str, n: int, rng: random.Random | None = None) -> dict[str, Any]:
    rng = rng or random.Random(n)
    created = BASE_MS + n * 1_000
    record: dict[str, Any] = {
        "id": f"{entity[:3].upper()}{n:012d}",
        "createdAt": created,
        "updatedAt": created + rng.randint(0, 86_400_000),
        "entityType": entity,
    }
    if entity == "account":
        record |= {
            "name": rng.choice(COMPANIES),
            "healthScore": rng.randint(0, 100),
            "address": {
                "city": rng.choice(["Zürich", "São Paulo", "Kraków", "Austin"]),
                "country": rng.choice(["CH", "BR", "PL", "US"]),
            },
            "tags": rng.sample(["enterprise", "smb", "renewal", "churn-risk"], 2),
        }
    elif entity == "contact":
        record |= {
            "name": rng.choice(NAMES),
            "email": f"user{n}@example.com",
            "accountId": f"ACC{rng.randint(0, 999):012d}",
            "phone": None,
        }
    elif entity == "opportunity":
        record |= {
            "name": f"Deal {n} — {rng.choice(COMPANIES)}",
            "stage": rng.choice(STAGES),
            "amount": round(rng.uniform(1_000, 500_000), 2),
            "owner": {"name": rng.choice(NAMES), "email": f"rep{n % 17}@example.com"},
            "accountId": f"ACC{rng.randint(0, 999):012d}",
        }
    else:
        record |= {
            "type": rng.choice(["call", "email", "meeting"]),
            "subject": f"Follow-up with {rng.choice(NAMES)}",
            "opportunityId": f"OPP{rng.randint(0, 999):012d}",
            "durationMin": rng.randint(1, 90),
        }
    return record
