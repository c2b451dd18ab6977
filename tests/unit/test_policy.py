"""Association acceptance policy (pure)."""

import pytest

from appliance.domain.policy import AssociationPolicy, RefusalReason, TrustedPeer

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
