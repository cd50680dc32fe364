"""``policy.verify(attestation, ExpectedPolicy, nonce) -> Verification``: what a verifier (the client, the key
broker) checks before it trusts a server, in numbered steps; the first that fails stops the rest.

1. platform        the evidence's platform is one the policy accepts (simulation only when named)
2. quote           the platform verifies the evidence (signature, trusted key, pinned registers)
3. binding         the quote's report data is the sha256 of the statement bytes received
4. statement       the statement parses, in this format, for the same platform
5. nonce           the statement carries this verifier's fresh nonce (a replayed statement carries another)
6. freshness       the statement is younger than the policy's maximum age (and not from the future)
7. code            the code measurement is one the policy allows
8. model           the model (every model, for the broker) has an allowed bundle digest or a trusted signer
9. serving policy  API keys required, payloads never logged
10. key            the statement carries a public key for the suite the verifier will use

``ExpectedPolicy.from_toml`` reads the owner's policy file (the key broker's)::

    platforms = ["simulation"]               # accepted; hardware names: tdx, sev-snp, nitro
    platform_keys = ["platform-key.pub.pem"] # trusted simulation platform keys (relative to the file)
    code_measurements = ["<sha256 hex>"]     # or "local": the measurement of the onnxguard installed here
    bundle_digests = ["<sha256 hex>"]        # and/or signers = ["signing-key.pub.pem"]
    max_age_s = 60
"""

from __future__ import annotations

import enum
import os
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from onnxguard.confidential import attestation as attestation_lib
from onnxguard.confidential import envelope
from onnxguard.confidential.attestation import Attestation
from onnxguard.confidential.platform import HARDWARE, KNOWN, SIMULATION, PlatformError, PlatformPolicy, verifier
from onnxguard.errors import CheckFailed, InputError

LOCAL = "local"  # in a policy: the code measurement of the onnxguard installed where the policy is read
MAX_FUTURE_S = 5.0  # a statement may be this far ahead of the verifier's clock
MAX_POLICY_BYTES = 1 << 20


class Check(enum.Enum):
    """The verifier's checks, in the order they run."""

    PLATFORM = "platform"
    QUOTE = "quote"
    BINDING = "binding"
    STATEMENT = "statement"
    NONCE = "nonce"
    FRESHNESS = "freshness"
    CODE = "code"
    MODEL = "model"
    SERVING_POLICY = "serving policy"
    KEY = "key"

    @property
    def number(self) -> int:
        return list(Check).index(self) + 1


class Status(enum.Enum):
    """The outcome of one check."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_CHECKED = "not checked"  # a step after a failure: nothing vouches for it


@dataclass(frozen=True)
class CheckResult:
    """One check: its outcome and the detail behind it."""

    check: Check
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.check.number, "check": self.check.value, "status": self.status.value,
                "detail": self.detail}


@dataclass(frozen=True)
class ExpectedPolicy:
    """What a verifier expects of a server before it sends anything (or releases a key)."""

    platforms: frozenset[str]
    code_measurements: frozenset[str]
    bundle_digests: frozenset[str] = frozenset()
    signers: frozenset[str] = frozenset()  # "sha256:..." fingerprints of trusted bundle signing keys
    platform: PlatformPolicy = field(default_factory=PlatformPolicy)
    max_age_s: float = 60.0
    model: str | None = None  # the model the client will call; None: every model the server serves

    def __post_init__(self) -> None:
        unknown = sorted(self.platforms - set(KNOWN))
        if unknown:
            raise InputError(f"unknown platform(s) {unknown}; known: {', '.join(KNOWN)}")
        if not self.platforms:
            raise InputError("the policy accepts no platform", hint=f"name one of {', '.join(KNOWN)}")
        if not self.code_measurements:
            raise InputError("the policy allows no code measurement: no server could pass",
                             hint="name the sha256 of the code you audited, or 'local' for the onnxguard here")
        if not self.bundle_digests and not self.signers:
            raise InputError("the policy names neither a bundle digest nor a trusted signer: any model would pass",
                             hint="name the bundle digest (sha256 of its manifest.json) or the signer's public key")
        if not 0 < self.max_age_s <= 86400:
            raise InputError(f"a maximum age of {self.max_age_s} s; give 0 < max_age_s <= 86400")

    @classmethod
    def of(cls, *, platforms: Iterable[str], code_measurements: Iterable[str], bundle_digests: Iterable[str] = (),
           signer_keys: Iterable[str | os.PathLike[str]] = (), platform_keys: Iterable[str | os.PathLike[str]] = (),
           max_age_s: float = 60.0, model: str | None = None) -> ExpectedPolicy:
        """A policy from plain values: ``local`` among the measurements stands for this install's; keys are
        PEM files (signers: the bundle signing keys; platform keys: trusted simulation platform keys)."""
        from onnxguard.confidential.platform.simulation import load_public_key
        from onnxguard.trust import signing

        codes = {attestation_lib.code()["measurement"] if c == LOCAL else _hex(c, "code measurement")
                 for c in code_measurements}
        return cls(frozenset(platforms), frozenset(codes), frozenset(_hex(d, "bundle digest") for d in bundle_digests),
                   frozenset(signing.fingerprint(Path(k)) for k in signer_keys),
                   PlatformPolicy(tuple(load_public_key(k) for k in platform_keys)), float(max_age_s), model)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ExpectedPolicy:
        """The owner's policy file (see the module's docstring); paths in it are relative to the file."""
        from onnxguard.bundle import files

        p = Path(path)
        try:
            data = tomllib.loads(files.read_regular(p, MAX_POLICY_BYTES, what="policy").data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: not a valid TOML file ({e})") from None
        known = {"platforms", "platform_keys", "code_measurements", "bundle_digests", "signers", "max_age_s"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{p}: unknown setting(s) {unknown}", hint=f"use {', '.join(sorted(known))}")
        for name in known - {"max_age_s"}:
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{p}: {name} must be a list of strings")
        age = data.get("max_age_s", 60.0)
        if not isinstance(age, int | float) or isinstance(age, bool):
            raise InputError(f"{p}: max_age_s must be a number of seconds")

        def rel(v: str) -> Path:
            return Path(v) if Path(v).is_absolute() else p.parent / v

        try:
            return cls.of(platforms=data.get("platforms", []), code_measurements=data.get("code_measurements", []),
                          bundle_digests=data.get("bundle_digests", []),
                          signer_keys=[rel(v) for v in data.get("signers", [])],
                          platform_keys=[rel(v) for v in data.get("platform_keys", [])], max_age_s=age)
        except InputError as e:
            raise InputError(f"{p}: {e.message}", hint=e.hint) from None

    def to_dict(self) -> dict[str, Any]:
        return {"platforms": sorted(self.platforms), "code_measurements": sorted(self.code_measurements),
                "bundle_digests": sorted(self.bundle_digests), "signers": sorted(self.signers),
                "max_age_s": self.max_age_s, "model": self.model}


def _hex(value: str, what: str) -> str:
    v = value.lower().removeprefix("sha256:")
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise InputError(f"{value!r} is not a sha256 {what} (64 hex digits)")
    return v


@dataclass(frozen=True)
class Verification:
    """Every check's outcome; the statement (parsed) and the platform's claims when they got that far."""

    steps: tuple[CheckResult, ...]
    statement: dict[str, Any] | None = field(default=None, repr=False)
    hardware: bool = False

    @property
    def passed(self) -> bool:
        return all(s.status is Status.PASSED for s in self.steps)

    @property
    def failed(self) -> CheckResult | None:
        return next((s for s in self.steps if s.status is Status.FAILED), None)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "hardware": self.hardware, "steps": [s.to_dict() for s in self.steps]}


class AttestationRefused(CheckFailed):
    """The server's attestation failed a check: nothing is sent (exit 1). Names the check."""

    def __init__(self, verification: Verification) -> None:
        failed = verification.failed
        assert failed is not None
        super().__init__(f"attestation refused at step {failed.check.number} ({failed.check.value}): {failed.detail}"
                         "; nothing was sent")
        self.verification = verification
        self.check = failed.check


class _Stop(Exception):  # noqa: N818 - internal: a check failed
    def __init__(self, check: Check, detail: str) -> None:
        super().__init__(detail)
        self.check, self.detail = check, detail


def verify(att: Attestation, policy: ExpectedPolicy, nonce: bytes | None, *, suite: str = envelope.DEFAULT_SUITE,
           now: float | None = None) -> Verification:
    """Run every check in order (``nonce`` None: the verifier has no nonce for it, step 5 fails)."""
    now = time.time() if now is None else now
    done: list[CheckResult] = []
    doc: dict[str, Any] | None = None
    hardware = False

    def ok(check: Check, detail: str) -> None:
        done.append(CheckResult(check, Status.PASSED, detail))

    try:
        ev = att.evidence
        if ev.platform not in policy.platforms:
            why = " (simulation proves nothing about the host; this policy demands hardware)" \
                if ev.platform == SIMULATION and policy.platforms <= set(HARDWARE) else ""
            raise _Stop(Check.PLATFORM, f"platform {ev.platform!r} is not accepted (accepted: "
                                        f"{', '.join(sorted(policy.platforms))}){why}")
        ok(Check.PLATFORM, ev.platform + (" (SIMULATION: no hardware isolation)" if ev.platform == SIMULATION else ""))
        try:
            claims = verifier(ev.platform).verify(ev, policy.platform)
        except PlatformError as e:
            raise _Stop(Check.QUOTE, e.message) from None
        hardware = claims.hardware
        ok(Check.QUOTE, f"verified ({claims.vouched_by})")
        if claims.report_data != att.report_data:
            raise _Stop(Check.BINDING, "the quote vouches for other bytes than this statement (altered in transit?)")
        ok(Check.BINDING, "report data = sha256(statement)")
        try:
            parsed = orjson.loads(att.statement)
        except orjson.JSONDecodeError:
            raise _Stop(Check.STATEMENT, "the statement is not JSON") from None
        if not isinstance(parsed, dict) or parsed.get("format") != attestation_lib.FORMAT:
            raise _Stop(Check.STATEMENT, f"not an {attestation_lib.FORMAT} statement")
        doc = parsed
        if doc.get("platform") != ev.platform:
            raise _Stop(Check.STATEMENT, f"the statement says platform {doc.get('platform')!r}, its evidence "
                                         f"{ev.platform!r}")
        ok(Check.STATEMENT, attestation_lib.FORMAT)
        if nonce is None:
            raise _Stop(Check.NONCE, "the statement's nonce was not issued by this verifier, or was already used "
                                     "(a replayed attestation)")
        if doc.get("nonce") != nonce.hex():
            raise _Stop(Check.NONCE, "the statement carries another nonce than the one just sent (a replayed "
                                     "attestation)")
        ok(Check.NONCE, "the verifier's fresh nonce")
        made = doc.get("time")
        if not isinstance(made, int | float):
            raise _Stop(Check.FRESHNESS, "the statement has no time")
        age = now - made
        if age > policy.max_age_s or age < -MAX_FUTURE_S:
            raise _Stop(Check.FRESHNESS, f"the statement is {age:.1f} s old; the policy accepts up to "
                                         f"{policy.max_age_s:g} s (stale)" if age > 0 else
                                         f"the statement is {-age:.1f} s in the future")
        ok(Check.FRESHNESS, f"{max(age, 0.0):.1f} s old (max {policy.max_age_s:g} s)")
        code = _section(doc, "code")
        measurement = code.get("measurement")
        if measurement not in policy.code_measurements:
            raise _Stop(Check.CODE, f"code measurement {str(measurement)[:16]}... is not one the policy allows "
                                    f"(onnxguard {code.get('onnxguard')}, onnxruntime {code.get('onnxruntime')})")
        ok(Check.CODE, f"{measurement[:16]}... (onnxguard {code.get('onnxguard')}, "
                       f"onnxruntime {code.get('onnxruntime')})")
        ok(Check.MODEL, _models(doc, policy))
        served = _section(doc, "policy")
        if served.get("payload_logging") != "never" or served.get("auth") != "api-key":
            raise _Stop(Check.SERVING_POLICY, f"the serving policy does not promise API keys and no payload "
                                              f"logging ({served})")
        ok(Check.SERVING_POLICY, "API keys, payloads never logged, audit of hashes only")
        keys = _section(doc, "keys")
        if not isinstance(keys.get(suite), str):
            raise _Stop(Check.KEY, f"no public key for suite {suite} (offered: {', '.join(keys) or 'none'})")
        try:
            envelope.decode_public(suite, keys[suite])
        except InputError as e:
            raise _Stop(Check.KEY, e.message) from None
        ok(Check.KEY, f"{suite} key {envelope.key_id(keys[suite])}")
    except _Stop as stop:
        done.append(CheckResult(stop.check, Status.FAILED, stop.detail))
        done += [CheckResult(c, Status.NOT_CHECKED, "a previous check failed") for c in list(Check)[len(done):]]
    return Verification(tuple(done), doc, hardware)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _models(doc: dict[str, Any], policy: ExpectedPolicy) -> str:
    models = doc.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise _Stop(Check.MODEL, "the statement lists no model")
    if policy.model is not None:
        models = [m for m in models if m.get("name") == policy.model]
        if not models:
            raise _Stop(Check.MODEL, f"the server does not serve model {policy.model!r}")
    for m in models:
        if m.get("bundle_digest") in policy.bundle_digests:
            continue
        signer = str(m.get("signer") or "")
        if policy.signers and signer.removeprefix("key ") in policy.signers:
            continue
        raise _Stop(Check.MODEL, f"model {m.get('name')!r} is bundle {str(m.get('bundle_digest'))[:16]}..., signed "
                                 f"by {signer or 'nobody'}: neither an expected bundle digest nor a trusted signer")
    return ", ".join(f"{m.get('name')} {str(m.get('bundle_digest'))[:16]}..." for m in models)


def check(att: Attestation, policy: ExpectedPolicy, nonce: bytes | None, *, suite: str = envelope.DEFAULT_SUITE,
          now: float | None = None) -> Verification:
    """``verify``, raising ``AttestationRefused`` (exit 1, naming the check) unless every check passed."""
    result = verify(att, policy, nonce, suite=suite, now=now)
    if not result.passed:
        raise AttestationRefused(result)
    return result
