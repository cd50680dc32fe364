"""Confidential inference: attestation (attestation.py) through a platform (platform/: simulation, and the seam
for TDX, SEV-SNP and Nitro), the verifier's policy (policy.py), HPKE envelopes (envelope.py) and the key broker
(keybroker.py). The client is ``onnxguard.client``; the server side is ``onnxguard.serve.confidential``.
docs/confidential.md: the protocol and the threat model."""
