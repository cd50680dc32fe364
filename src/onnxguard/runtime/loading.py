"""``runtime.load(bundle, policy) -> Loaded``: a bundle opened through the trust door, ready to run.

    runtime.load("bundle/", TrustPolicy(PublicKeys((Path("signer.pub"),)))).run(
        {"input_ids": ids, "attention_mask": mask})  # -> {"logits": ...}

The names are the bundle's. A text model (one with the plan's mask input) runs length-aware
(:class:`~onnxguard.runtime.lengths.LengthAware`, with the bucket plan the bundle's manifest records, or a
conservative default for a bundle built before plans existed); ``Loaded.plain`` runs the padded batch as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from onnxguard.bundle.manifest import Manifest
from onnxguard.errors import InputError
from onnxguard.progress import Progress, silent
from onnxguard.runtime import core, memory
from onnxguard.runtime.lengths import Cost, LengthAware, LengthPlan
from onnxguard.trust import OpenedBundle, TrustPolicy, open_bundle
from onnxguard.trust.sealing.identities import IdentitySource


def plan_of(manifest: Manifest) -> LengthPlan:
    """The manifest's bucket plan, or the default (left-padded rows keep their width) when it records none."""
    lengths = manifest.lengths
    if lengths is None:
        return LengthPlan()
    return LengthPlan(mask=lengths.mask, cost=Cost(**lengths.cost), max_buckets=lengths.max_buckets,
                      shift_free=lengths.shift_free, sequence_outputs=tuple(lengths.sequence_outputs))


@dataclass(frozen=True)
class Loaded:
    """An opened bundle's model in an ONNX Runtime session. ``run`` is length-aware for a text model.
    ``opened`` is the opening without the model's bytes (:meth:`OpenedBundle.without_model`)."""

    opened: OpenedBundle = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    lengths: LengthAware = field(repr=False)

    @property
    def inputs(self) -> list[str]:
        return self.lengths.inputs

    @property
    def outputs(self) -> list[str]:
        return self.lengths.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch; a padded text batch runs without its padding (same outputs)."""
        return self.lengths.run(inputs)

    def plain(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch run as given, padding and all."""
        return self.lengths.plain(inputs)


def load(bundle: str | os.PathLike[str] | OpenedBundle, policy: TrustPolicy | None = None,
         identity: IdentitySource = None, passphrase: str | None = None, *, threads: int = 0,
         config: Mapping[str, str] | None = None, progress: Progress = silent) -> Loaded:
    """The bundle at ``bundle``, opened through the door under ``policy`` (``identity``/``passphrase`` for a
    sealed one), in a session of ``threads`` intra-op threads (0: the runtime's choice); or an already opened
    bundle as it is. The door's failures raise as they do everywhere (``TrustFailed``)."""
    if isinstance(bundle, OpenedBundle):
        opened = bundle
    else:
        if policy is None:
            raise InputError("runtime.load of a bundle path needs a TrustPolicy: the door decides what may run",
                             hint="pass trust.TrustPolicy(...) naming the signer's key, or an opened bundle")
        opened = open_bundle(bundle, policy, identity, passphrase, progress)
    sess = core.session(opened.model_bytes, threads=threads, config=config, name=str(opened.path / opened.model_name))
    # The session holds what it needs of the model: ``Loaded.opened`` is the opening without the model's bytes,
    # and the parses' freed heap goes back to the system (see runtime.memory).
    loaded = Loaded(opened.without_model(), sess, LengthAware(sess, plan_of(opened.manifest)))
    del opened
    memory.give_back()
    return loaded
