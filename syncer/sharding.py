"""Sharding the proxies across syncer replicas: which shard a proxy belongs to, and
which shards a replica should hold. Pure functions, no I/O: every replica computes
the same answers from the same inputs.

* A proxy's shard is chosen by rendezvous (highest-random-weight) hashing of its
  label over the shard indexes. The weight is a keyed blake2b digest, never
  Python's `hash()` (salted per process, so two replicas would disagree). A proxy's
  shard depends on its label and the shard count only: proxies coming and going
  never move the others, and going from N to N+1 shards moves only the proxies
  that the new shard wins (about 1/(N+1) of them).
* A replica's share: the shards are split as evenly as the live members allow
  (`shards // members` each, one more for `shards % members` of them). The extra
  ones go to the members that hold the most now, so that as few shards as possible
  change hands, then by identity, so that every replica ranks the members alike.
  A replica below its share takes free shards in its own rendezvous order (the
  replicas' orders differ, so they rarely race for the same one); one above it
  releases the shards it prefers least.

Safety (one writer per shard) does not come from here: it comes from the per-shard
Lease rules. These decisions only spread the work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

MAX_SHARDS = 256  # the shard index is hashed as two bytes; 256 Leases is plenty


def weight(shard: int, key: str) -> int:
    """The rendezvous weight of `key` for `shard`: stable across processes and hosts."""
    data = shard.to_bytes(2, "big") + key.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def preference(key: str, shards: int) -> tuple[int, ...]:
    """Every shard, from the one `key` prefers most to the one it prefers least
    (ties, which 64-bit digests make vanishingly rare, go to the lower index)."""
    return tuple(sorted(range(shards), key=lambda i: (-weight(i, key), i)))


def shard_of(key: str, shards: int) -> int:
    """The shard of the proxy labelled `key`, in range(shards)."""
    if shards <= 1:
        return 0
    return preference(key, shards)[0]


def assign(keys: Iterable[str], shards: int) -> dict[str, int]:
    """The shard of each proxy label."""
    return {key: shard_of(key, shards) for key in keys}


def short_hash(text: str) -> str:
    """Ten hex digits of `text`'s digest: a name part that fits any Kubernetes name."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


def shard_lease_name(lease_name: str, shard: int) -> str:
    return f"{lease_name}-{shard}"


def member_lease_name(lease_name: str, identity: str) -> str:
    """A replica's membership Lease: named after its identity's hash (an identity
    such as `pod_1a2b3c4d` is not a valid object name)."""
    return f"{lease_name}-member-{short_hash(identity)}"


def quotas(shards: int, held: Mapping[str, int]) -> dict[str, int]:
    """How many shards each live member (the keys of `held`, with how many they hold
    now) should hold. The quotas sum to `shards`, so every shard has a taker and a
    member below its quota is matched by one above it or by a free shard."""
    if not held:
        return {}
    base, extra = divmod(shards, len(held))
    ranked = sorted(held, key=lambda member: (-held[member], member))
    return {member: base + (1 if rank < extra else 0) for rank, member in enumerate(ranked)}


def fair_share(shards: int, members: int) -> int:
    """The most any replica holds once balanced: ceil(shards / members)."""
    return -(-shards // max(1, members))


@dataclass(frozen=True, slots=True)
class Moves:
    """What one replica should do this round: take these free shards, hand these over."""

    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()
    quota: int = 0


def rebalance(
    *,
    me: str,
    shards: int,
    members: Collection[str],
    holders: Mapping[int, str],
    mine: Collection[int],
) -> Moves:
    """One replica's balancing decision.

    `members`: the live members seen (this replica is added if missing); `holders`:
    each shard with a live holder (a shard absent from it and from `mine` is free:
    never created, released, or expired); `mine`: the
    shards this replica holds. A shard held by a replica that is not (yet, or any
    longer) a live member is neither free nor counted."""
    # A Lease still naming this replica that it no longer holds (a lapsed renewal)
    # is free for it to take again.
    others = {shard: holder for shard, holder in holders.items() if holder != me}
    held = dict.fromkeys(set(members) | {me}, 0)
    for holder in others.values():
        if holder in held:
            held[holder] += 1
    held[me] = len(mine)
    quota = quotas(shards, held)[me]
    order = preference(me, shards)
    if len(mine) > quota:
        surplus = len(mine) - quota
        least_wanted = [s for s in reversed(order) if s in mine]
        return Moves(release=tuple(least_wanted[:surplus]), quota=quota)
    free = [s for s in order if s not in others and s not in mine]
    return Moves(acquire=tuple(free[: quota - len(mine)]), quota=quota)
