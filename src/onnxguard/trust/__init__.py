"""Trust: keys, signatures, sealing, and the one door through which a bundle is opened.

``trust.open_bundle(path, TrustPolicy(...), identity)`` is how every verb and the server get at a bundle's
contents; see :mod:`onnxguard.trust.opening` for its numbered steps and :mod:`onnxguard.trust.policy` for
the rules and the (loudly named) waivers.
"""

from onnxguard.trust.opening import (
                                     OpenedBundle,
                                     Status,
                                     Step,
                                     StepResult,
                                     TrustFailed,
                                     TrustReport,
                                     examine,
                                     open_bundle,
                                     scan_bundle,
)
from onnxguard.trust.policy import (
                                     Certificates,
                                     PublicKeys,
                                     ScanRule,
                                     SigstoreIdentity,
                                     TrustPolicy,
                                     UnsafeUnscanned,
                                     UnsafeUnsigned,
)

__all__ = ["Certificates", "OpenedBundle", "PublicKeys", "ScanRule", "SigstoreIdentity", "Status", "Step",
           "StepResult", "TrustFailed", "TrustPolicy", "TrustReport", "UnsafeUnscanned", "UnsafeUnsigned", "examine",
           "open_bundle", "scan_bundle"]
