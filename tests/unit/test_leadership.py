"""syncer/leadership.py: holding a lease as the writers see it (Tenure), on a fake clock."""

from __future__ import annotations

from syncer.leadership import Tenure


def test_held_from_a_renewal_until_the_renew_deadline_passes():
    now = [100.0]
    changes: list[tuple[bool, str]] = []
    tenure = Tenure(
        renew_deadline=5.0, clock=lambda: now[0], on_change=lambda *c: changes.append(c)
    )
    assert not tenure.held()
    tenure.renewed()
    now[0] += 5.0
    assert tenure.held() and tenure.active
    tenure.renewed()  # a renewal while held tells nobody
    assert changes == [(True, "")]
    now[0] += 5.1
    # Judged at the check itself (before a write), not by the renewing thread.
    assert not tenure.held() and not tenure.active
    assert changes == [(True, ""), (False, "renew deadline passed")]


def test_lost_once_and_ended_silently():
    changes: list[tuple[bool, str]] = []
    tenure = Tenure(renew_deadline=5.0, clock=lambda: 0.0, on_change=lambda *c: changes.append(c))
    tenure.renewed()
    tenure.lose("lease taken by another holder")
    tenure.lose("again")  # not held any longer: nothing to say
    assert changes == [(True, ""), (False, "lease taken by another holder")]
    tenure.renewed()
    assert tenure.end() is True and tenure.end() is False  # the owner reports it itself
    assert changes[-1] == (True, "") and not tenure.held()
