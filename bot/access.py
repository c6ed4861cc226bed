"""Who may ask: allowlists of places and people (an empty list lets everyone in)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

REFUSAL = "Sorry, I'm not set up to answer {what}. Please ask someone who runs me to add {it}."


@dataclass(frozen=True)
class Allowlist:
    places: frozenset[str] = field(default_factory=frozenset)  # channel (or guild) ids
    people: frozenset[str] = field(default_factory=frozenset)  # user (or role) ids

    @classmethod
    def of(cls, places: Iterable[str] = (), people: Iterable[str] = ()) -> Allowlist:
        return cls(frozenset(places), frozenset(people))

    def refusal(self, place_ids: Collection[str], person_ids: Collection[str]) -> str | None:
        """None when allowed; else a polite sentence saying why not. Any matching id admits (e.g. a role)."""
        if self.places and not self.places.intersection(place_ids):
            return REFUSAL.format(what="in this channel", it="it")
        if self.people and not self.people.intersection(person_ids):
            return REFUSAL.format(what="your questions", it="you")
        return None
