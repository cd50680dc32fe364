"""Signing bundles with the OpenSSF ``model-signing`` library, and verifying their signatures.

``sign(bundle, private_key)`` writes ``BUNDLE/model.sig``: a Sigstore bundle holding a DSSE envelope over an
in-toto statement that lists the sha256 of every file in the bundle directory except ``model.sig`` itself
(and the git paths ``.git``, ``.gitattributes``, ``.github``, ``.gitignore``, which the library ignores by
default and a bundle never holds: ``bundle.read`` refuses any file the manifest does not list). Since
``manifest.json`` is one of the signed files and it holds the sha256 of every other file, the signature
covers the whole bundle.

The signature verifies with the reference command of the ``model-signing`` package, which ignores the
``--signature`` path itself and reads the ignore list recorded in the signature::

    model_signing verify key --signature BUNDLE/model.sig --public_key PUBLIC.pem BUNDLE

Three ways to sign, as the library offers them:

- ``sign``: an elliptic-curve private key (P-256, P-384 or P-521; ``onnxguard keygen`` makes P-256).
- ``sign_with_certificate``: a private key with its X.509 signing certificate and chain.
- ``sign_with_sigstore``: Sigstore keyless signing (OIDC identity, Fulcio, Rekor). It needs a network and was
  not exercised in onnxguard's tests, which run offline.

A bundle is checked against its manifest before it is signed: a modified bundle is never signed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from onnxguard import bundle
from onnxguard.bundle import MANIFEST, SIGNATURE, files
from onnxguard.errors import BundleError, CheckFailed, InputError, OnnxguardError, Remedy
from onnxguard.progress import Event, Progress, silent
from onnxguard.trust.policy import Certificates, PublicKeys, SignatureRule, SigstoreIdentity

if TYPE_CHECKING:
    import model_signing
    from model_signing.signing import Config as SigningConfig
    from model_signing.verifying import Config as VerifyingConfig

PathLike = str | os.PathLike[str]
KEY = "key"
CERTIFICATE = "certificate"
SIGSTORE = "sigstore"
# The curves model-signing's key signer accepts (it follows Sigstore's protobuf specs).
CURVES = ("secp256r1", "secp384r1", "secp521r1")
# A PEM key is a few hundred bytes and a certificate chain a few KiB: anything near a megabyte is not one, and is
# refused from its size before it is read.
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True)
class SignResult:
    """Where a signature was written, how it was made, and how many files it covers."""

    bundle: Path
    signature: Path
    method: str  # key | certificate | sigstore
    files: int  # files covered by the signature (every bundle file but model.sig)
    replaced: bool  # an earlier model.sig was replaced

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "signature": str(self.signature), "method": self.method,
                "files": self.files, "replaced": self.replaced}


@dataclass(frozen=True)
class SignatureReport:
    """The outcome of checking ``model.sig``: ``passed`` False with the reason in ``detail`` when it fails."""

    bundle: str
    signature: str
    method: str  # key | certificate | sigstore
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_for_failure(self) -> SignatureReport:
        """``CheckFailed`` (exit 1) when the signature did not verify; else ``self``."""
        if not self.passed:
            raise CheckFailed(f"{self.signature}: {self.detail}")
        return self


# -- keys ------------------------------------------------------------------------------------------------

def _read(path: PathLike, what: str) -> bytes:
    return files.read_regular(path, MAX_PEM_BYTES, what=what).data


def _check_curve(key: object, path: PathLike, kind: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        name = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")
        raise InputError(f"{path}: is a {name or 'non-EC'} {kind} key; model-signing signs with elliptic-curve keys "
                         "(P-256, P-384, P-521): make one with `onnxguard keygen`")
    if key.curve.name not in CURVES:
        raise InputError(f"{path}: an elliptic-curve key on {key.curve.name}; model-signing accepts P-256, P-384 "
                         "and P-521 only")


def load_private_key(path: PathLike, password: str | None = None) -> ec.EllipticCurvePrivateKey:
    """The EC private key in the PEM file ``path``; ``InputError`` naming the file for anything else."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "a PEM private key")
    if b"-----BEGIN" not in data:
        raise InputError(f"{path}: not a PEM file; expected a PEM private key (-----BEGIN PRIVATE KEY-----)")
    if b"PRIVATE KEY-----" not in data:
        raise InputError(f"{path}: not a PEM private key (is it the public key or a certificate?); "
                         "sign with the private key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError as e:
        if password is None:
            raise InputError(f"{path}: the private key is encrypted", remedy=Remedy.PASSWORD) from e
        raise InputError(f"{path}: the private key is not encrypted; drop the password") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = "wrong password, or " if password is not None else ""
        raise InputError(f"{path}: cannot load the private key ({hint}{str(e).splitlines()[0]})") from e
    _check_curve(key, path, "private")
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # _check_curve refused anything else
    return key


def load_public_key(path: PathLike) -> ec.EllipticCurvePublicKey:
    """The EC public key in the PEM file ``path``; ``InputError`` naming the file for anything else."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "a PEM public key")
    if b"-----BEGIN" not in data:
        raise InputError(f"{path}: not a PEM file; expected a PEM public key (-----BEGIN PUBLIC KEY-----)")
    if b"PRIVATE KEY-----" in data:
        raise InputError(f"{path}: is a private key; verify with the public key (never ship the private one)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise InputError(f"{path}: not a PEM public key ({str(e).splitlines()[0]})") from e
    _check_curve(key, path, "public")
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _check_curve refused anything else
    return key


# -- signing ---------------------------------------------------------------------------------------------

def _hashing_config() -> model_signing.hashing.Config:
    """What is signed: every file but ``model.sig``, the same rules as the reference ``model_signing`` command."""
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=True)


def _sign(bundle_dir: PathLike, method: str, configure: Callable[[SigningConfig], SigningConfig],
          progress: Progress) -> SignResult:
    b = bundle.read(bundle_dir, keep=False)  # a bundle that does not match its manifest is never signed
    import model_signing

    sig = b.path / SIGNATURE
    replaced = sig.exists()
    progress(Event("sign", f"signing {len(b.manifest.files) + 1} files with model-signing ({method})"))
    config = configure(model_signing.signing.Config()).set_hashing_config(_hashing_config())
    try:
        config.sign(b.path, sig)
    except OnnxguardError:
        raise
    except OSError as e:
        raise InputError(f"{sig}: cannot write the signature ({e.strerror or e})") from e
    progress(Event("sign", f"signed: {sig}", done=True))
    return SignResult(b.path, sig, method, len(b.manifest.files) + 1, replaced)


def sign(bundle_dir: PathLike, private_key: PathLike, password: str | None = None,
         progress: Progress = silent) -> SignResult:
    """Sign the bundle with an EC private key (PEM); writes ``BUNDLE/model.sig``."""
    load_private_key(private_key, password)  # clear errors before the library sees the file

    def configure(c: SigningConfig) -> SigningConfig:
        # model-signing 1.1.1 hands ``password`` straight to cryptography, which wants bytes (its hint says str)
        secret = password.encode() if password is not None else None
        return c.use_elliptic_key_signer(private_key=Path(private_key), password=secret)  # type: ignore[arg-type]

    return _sign(bundle_dir, KEY, configure, progress)


def sign_with_certificate(bundle_dir: PathLike, private_key: PathLike, signing_certificate: PathLike,
                          certificate_chain: Sequence[PathLike] = (), progress: Progress = silent) -> SignResult:
    """Sign with a private key and its X.509 signing certificate; the chain is embedded in the signature."""
    from cryptography import x509

    key = load_private_key(private_key)
    certs = []
    for path in (signing_certificate, *certificate_chain):
        data = _read(path, "a PEM certificate")
        try:
            certs.append(x509.load_pem_x509_certificates(data))
        except ValueError as e:
            raise InputError(f"{path}: not a PEM X.509 certificate ({str(e).splitlines()[0]})") from e
    if certs[0][0].public_key() != key.public_key():
        raise InputError(f"{signing_certificate}: the certificate's public key is not the pair of {private_key}")

    def configure(c: SigningConfig) -> SigningConfig:
        return c.use_certificate_signer(private_key=Path(private_key), signing_certificate=Path(signing_certificate),
                                        certificate_chain=[Path(p) for p in certificate_chain])

    return _sign(bundle_dir, CERTIFICATE, configure, progress)


def sign_with_sigstore(bundle_dir: PathLike, identity_token: str | None = None, use_staging: bool = False,
                       oidc_issuer: str | None = None, use_ambient_credentials: bool = False,
                       progress: Progress = silent) -> SignResult:
    """Sigstore keyless signing. Needs a network (OIDC provider, Fulcio, Rekor); not tested offline."""

    def configure(c: SigningConfig) -> SigningConfig:
        return c.use_sigstore_signer(identity_token=identity_token, use_staging=use_staging, oidc_issuer=oidc_issuer,
                                     use_ambient_credentials=use_ambient_credentials)

    try:
        return _sign(bundle_dir, SIGSTORE, configure, progress)
    except OnnxguardError:
        raise
    except Exception as e:  # network, OIDC and Fulcio errors of every kind: one line, exit 2
        raise InputError(f"{bundle_dir}: Sigstore keyless signing failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no detail'}); it needs network access to the "
                         "OIDC provider, Fulcio and Rekor") from e


# -- verifying -------------------------------------------------------------------------------------------

# model-signing's diff lines, as they appear inside the repr of a list (quotes may be backslash-escaped).
_NAMES = re.compile(r"(Hash mismatch for|Extra files found in model|Missing files in model) \\?'([^'\\]+)\\?'"
                    r"(?:: ([^'\"\\\]]+))?")


def _explain(error: Exception) -> str:
    """model-signing's failure, in one line without raw digests."""
    text = str(error)
    if text.startswith("Signature mismatch"):
        parts = []
        for kind, name, rest in _NAMES.findall(text):
            if kind == "Hash mismatch for":
                parts.append(f"changed: {name}")
            else:
                parts.append(f"{'unsigned' if kind.startswith('Extra') else 'missing'}: {rest.strip()}")
        return "the bundle does not match its signature (" + ("; ".join(parts) or "files differ") + ")"
    if text.startswith("Key mismatch"):
        return "signed with another key (the public key does not match the signature)"
    first = text.splitlines()[0] if text else ""
    if type(error).__name__ == "InvalidSignature":
        return "the signature is not valid for this public key (wrong key, or model.sig was modified)"
    return f"does not verify ({type(error).__name__}{': ' + first if first else ''})"


class _SignatureText:
    """The bytes of ``model.sig`` as read once, offered to model-signing's reader, which wants a path."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)


# What model-signing may leave out of a signature: the signature itself and the git paths it ignores by default.
_IGNORABLE = {SIGNATURE, ".git", ".gitattributes", ".github", ".gitignore"}


def method(rule: SignatureRule) -> str:
    """How a rule checks a signature: ``key``, ``certificate`` or ``sigstore``."""
    return KEY if isinstance(rule, PublicKeys) else CERTIFICATE if isinstance(rule, Certificates) else SIGSTORE


def _configure(rule: SignatureRule, key: Path | None = None) -> VerifyingConfig:
    import model_signing

    config = model_signing.verifying.Config()
    if isinstance(rule, PublicKeys):
        assert key is not None, "a PublicKeys rule is configured one key at a time"
        return config.use_elliptic_key_verifier(public_key=key)
    if isinstance(rule, Certificates):
        return config.use_certificate_verifier(certificate_chain=list(rule.chain))
    return config.use_sigstore_verifier(identity=rule.identity, oidc_issuer=rule.issuer, use_staging=rule.staging)


def _signed_digests(signature: bytes, config: VerifyingConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """The per-file sha256 digests a signature vouches for, after its envelope verified.

    model-signing 1.1.1 (pinned) verifies a signature only against a directory it hashes itself; onnxguard
    hashes each bundle file once as it reads it, so it asks the library's verifier for the signed manifest and
    compares that with its own digests. (Private attributes of the pinned version; the reference
    ``model_signing verify`` command agrees, see tests/security/test_signing.py.)
    """
    from model_signing._signing import sign_sigstore, sign_sigstore_pb

    reader = sign_sigstore.Signature if config._uses_sigstore else sign_sigstore_pb.Signature
    signed = config._verifier.verify(reader.read(_SignatureText(signature)))  # type: ignore[arg-type]  # read_text only
    digests = {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}
    return digests, dict(signed.serialization_type)


def _compare(signed: dict[str, str], serialization: dict[str, Any], digests: Mapping[str, str]) -> str | None:
    """Why the signed digests do not describe these files, or None when they do."""
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        return f"the signature uses a serialization onnxguard does not check ({serialization.get('method')}, " \
               f"{serialization.get('hash_type')}); sign with onnxguard sign"
    extra = set(serialization.get("ignore_paths", ())) - _IGNORABLE
    if extra:
        return f"the signature leaves out files it should cover ({', '.join(sorted(extra))})"
    parts = [f"changed: {rel}" for rel in sorted(set(signed) & set(digests)) if signed[rel] != digests[rel]]
    parts += [f"unsigned: {rel}" for rel in sorted(set(digests) - set(signed))]
    parts += [f"missing: {rel}" for rel in sorted(set(signed) - set(digests))]
    return "the bundle does not match its signature (" + "; ".join(parts) + ")" if parts else None


def check(signature: bytes, digests: Mapping[str, str], rule: SignatureRule, where: PathLike) -> SignatureReport:
    """Does ``signature`` (the bytes of ``model.sig``) vouch, under ``rule``, for exactly these ``digests``
    (relative path -> sha256 of every bundle file but ``model.sig``, as read)?

    Never raises for a signature that does not verify: the report says why (fail closed, whatever the library
    raises). ``InputError`` only when the rule itself is unusable (a key that is not an EC public key).
    """
    sig = str(Path(where) / SIGNATURE)
    keys: tuple[Path | bytes | None, ...] = rule.keys if isinstance(rule, PublicKeys) else (None,)
    detail = "no key"
    for key in keys:
        with tempfile.TemporaryDirectory(prefix="onnxguard-pub-") as d:
            path = None
            if isinstance(key, bytes):
                path = Path(d) / "public.pem"
                path.write_bytes(key)
            elif key is not None:
                path = Path(key)
            if path is not None:
                load_public_key(path)
            config = _configure(rule, path)
            try:
                signed, serialization = _signed_digests(signature, config)
            except Exception as e:  # noqa: BLE001 - whatever model-signing raises, the signature did not verify
                detail = _explain(e)
                continue
        why = _compare(signed, serialization, digests)
        if why is not None:
            return SignatureReport(str(where), sig, method(rule), False, why)
        return SignatureReport(str(where), sig, method(rule), True, "verified")
    return SignatureReport(str(where), sig, method(rule), False, detail)


def _verify(bundle_dir: PathLike, rule: SignatureRule) -> SignatureReport:
    """Read the bundle's files once (the same reader as ``trust.open_bundle``) and check its signature; a manifest
    that cannot be read is checked too (as the door does): its digest is not the signed one, which names it."""
    root = Path(bundle_dir)
    try:
        manifest, manifest_sha = bundle.read_manifest(root)
    except BundleError:
        if not os.path.lexists(root / MANIFEST):
            raise  # not a bundle: the check cannot run
        digests = files.digests(root)  # damaged: every regular file's digest, manifest.json's included
    else:
        digests = {**files.check(root, manifest).digests, MANIFEST: manifest_sha}
    sig = root / SIGNATURE
    if not os.path.lexists(sig):
        return SignatureReport(str(root), str(sig), method(rule), False,
                               f"the bundle is not signed ({SIGNATURE} is missing)")
    try:
        signature = files.read_regular(sig, files.MAX_METADATA_BYTES).data
    except InputError as e:
        return SignatureReport(str(root), str(sig), method(rule), False, str(e))
    return check(signature, digests, rule, root)


def verify(bundle_dir: PathLike, public_key: PathLike | bytes) -> SignatureReport:
    """Check ``BUNDLE/model.sig`` with an EC public key: a path to a PEM file, or the PEM bytes themselves.

    Returns a report (``passed`` False with the reason when the signature is missing or does not match);
    raises only when the check cannot run (no such bundle, a key that is not an EC public key).
    """
    return _verify(bundle_dir, PublicKeys((public_key if isinstance(public_key, bytes) else Path(public_key),)))


def verify_certificate(bundle_dir: PathLike, certificate_chain: Sequence[PathLike] = ()) -> SignatureReport:
    """Check a certificate signature against ``certificate_chain`` (PEM roots/intermediates; empty: the system's)."""
    for path in certificate_chain:
        if b"-----BEGIN CERTIFICATE-----" not in _read(path, "a PEM certificate"):
            raise InputError(f"{path}: not a PEM X.509 certificate")
    return _verify(bundle_dir, Certificates(tuple(Path(p) for p in certificate_chain)))


def verify_sigstore(bundle_dir: PathLike, identity: str, oidc_issuer: str,
                    use_staging: bool = False) -> SignatureReport:
    """Check a Sigstore keyless signature for ``identity`` issued by ``oidc_issuer``. Needs a network."""
    return _verify(bundle_dir, SigstoreIdentity(identity, oidc_issuer, use_staging))


def fingerprint(public_key: Path | bytes) -> str:
    """``sha256:`` of the key's DER SubjectPublicKeyInfo: how a signer is named in reports and attestations."""
    from cryptography.hazmat.primitives import serialization

    key = load_public_key(public_key) if not isinstance(public_key, bytes) else \
        serialization.load_pem_public_key(public_key)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def is_signed(bundle_dir: PathLike) -> bool:
    """Whether the bundle holds a signature file (regular, not a symlink); not whether it verifies."""
    sig = Path(bundle_dir) / SIGNATURE
    return sig.is_file() and not sig.is_symlink()

