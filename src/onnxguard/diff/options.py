"""What ``diff`` compares and where it draws the line: :class:`DiffOptions`, with defaults for a candidate that
claims to be the reference (a re-export, a copy from a supplier, a rebuilt bundle)."""

from __future__ import annotations

from dataclasses import dataclass

from onnxguard.bundle.golden import GoldenSet


@dataclass(frozen=True)
class DiffOptions:
    """Thresholds and the size of the search.

    ``golden``: the inputs to compare on (default: the reference bundle's golden set, else the candidate's, else
    inputs generated from the reference's signature). ``max_abs``: largest |candidate - reference| an output may
    show on them. ``max_flips``: golden examples whose predicted label may change. ``weight_atol``: largest
    change of an initializer element that is not reported as a change of weights. ``trigger_share``: a trigger
    (a token, a patch) is reported when it flips at least this share of the inputs it was tried on in the candidate
    and none of them in the reference. ``trigger_texts`` / ``trigger_images``: how many golden inputs the triggers
    are tried on; ``max_tokens``: the most vocabulary ids tried; ``batch_tokens``: tokens per ONNX Runtime call
    (rows of a text's length), which bounds the memory a call takes.
    ``vocab_size``: the vocabulary to search when neither a tokenizer nor an embedding tells it.
    """

    golden: GoldenSet | None = None
    max_abs: float = 1e-3
    max_flips: int = 0
    weight_atol: float = 1e-6
    triggers: bool = True
    trigger_share: float = 0.25
    trigger_texts: int = 8
    trigger_images: int = 16
    max_text_tokens: int = 64
    max_tokens: int = 262_144
    batch_tokens: int = 32_768
    patch: int = 3
    vocab_size: int | None = None
    generated_rows: int = 8

    def thresholds(self) -> dict[str, float | int]:
        """The thresholds, as reports record them."""
        return {"max_abs": self.max_abs, "max_flips": self.max_flips, "weight_atol": self.weight_atol,
                "trigger_share": self.trigger_share}
