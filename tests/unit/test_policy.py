"""Association acceptance policy (pure)."""

import pytest

from appliance.domain.policy import (
    AssociationPolicy,
    RefusalReason,
    SourceRateLimit,
    TrustedPeer,
)

POLICY = AssociationPolicy(
    called_ae_title="APPLIANCE",
    peers=(
        TrustedPeer("PACS", ("10.1.0.0/16", "192.168.5.7")),
        TrustedPeer("ANYWHERE"),
        TrustedPeer("TWICE", ("10.9.9.9",)),
        TrustedPeer("TWICE", ("10.8.8.8",)),
    ),
)


@pytest.mark.parametrize(
    ("calling", "called", "host", "refusal"),
    [
        ("PACS", "APPLIANCE", "10.1.200.3", None),
        ("PACS", "APPLIANCE", "192.168.5.7", None),
        ("PACS ", "APPLIANCE ", "10.1.0.1", None),
        ("PACS", "APPLIANCE", "10.2.0.1", RefusalReason.HOST_NOT_ALLOWED),
        ("PACS", "APPLIANCE", "not-an-ip", RefusalReason.HOST_NOT_ALLOWED),
        ("PACS", "OTHER", "10.1.0.1", RefusalReason.CALLED_AE_NOT_RECOGNISED),
        ("pacs", "APPLIANCE", "10.1.0.1", RefusalReason.CALLING_AE_NOT_RECOGNISED),
        ("STRANGER", "APPLIANCE", "10.1.0.1", RefusalReason.CALLING_AE_NOT_RECOGNISED),
        ("ANYWHERE", "APPLIANCE", "203.0.113.9", None),
        ("TWICE", "APPLIANCE", "10.8.8.8", None),
        ("TWICE", "APPLIANCE", "10.7.7.7", RefusalReason.HOST_NOT_ALLOWED),
        ("ANYWHERE", "APPLIANCE", "::1", None),
    ],
)
def test_refusal(calling: str, called: str, host: str, refusal: RefusalReason | None) -> None:
    assert POLICY.refusal(calling, called, host) is refusal


def test_rate_limit_allows_a_burst_then_the_average_rate_per_host() -> None:
    limit = SourceRateLimit(per_minute=60, burst=3)

    assert [limit.take("10.0.0.1", 0.0) for _ in range(5)] == [0, 0, 0, 1, 2]
    assert limit.take("10.0.0.2", 0.0) == 0, "another host has its own bucket"
    assert limit.take("10.0.0.1", 0.5) == 3, "half a token is not an association"
    assert limit.take("10.0.0.1", 1.0) == 0, "one token a second at 60 a minute"
    assert limit.take("10.0.0.1", 1.0) == 1, "the count of refusals in a row starts again"
    assert [limit.take("10.0.0.1", 100.0) for _ in range(4)] == [0, 0, 0, 1], "refills to burst"


def test_rate_limit_forgets_hosts_whose_bucket_refilled() -> None:
    limit = SourceRateLimit(per_minute=60, burst=2, max_hosts=3)
    for index in range(3):
        limit.take(f"10.0.0.{index}", 0.0)

    limit.take("10.0.0.9", 1.0)  # 10.0.0.0-2 need 2 s to refill: kept
    assert len(limit._buckets) == 4
    limit.take("10.0.0.8", 10.0)  # all refilled by now: forgotten

    assert set(limit._buckets) == {"10.0.0.8"}
