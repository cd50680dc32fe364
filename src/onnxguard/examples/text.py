"""Random-weight Transformers text models saved as ordinary model directories (config, weights, tokenizer).

Random weights do the same compute as trained ones, so these stand in for hub models where no network
exists: in tests (tiny configs) and in benchmarks (base-size configs).
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a an and or but not no is are was were be been have has had do does did will would can could should "
    "this that these those it its they them their we our you your he she his her i me my of in on at to for "
    "with from by about into over after before under between through during without again very more most "
    "good bad great terrible fine awful excellent poor love hate like enjoy boring fun movie film story plot "
    "actor actress scene music ending start time day night year people man woman child world life work "
    "house car city road water food book page word line hand eye head face friend family money game team "
    "play run walk talk see look watch hear think know feel want need make take give find tell ask use try "
    "new old big small long short high low first last next best worst early late young happy sad real true"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SIZES = {
    # name: (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),
    "base": (6, 768, 12, 3072),
}


VOCAB = SPECIALS + WORDS + [f"##{c}" for c in "sdy"]


def save_tokenizer(path: Path) -> None:
    """A WordPiece (BERT) tokenizer over :data:`VOCAB`, saved as Transformers saves it (tokenizer.json, config)."""
    from transformers import BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    # Transformers 5 takes the vocabulary itself: a vocab_file argument is ignored, leaving only the specials.
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(path)


def save_random_model(path: str | Path, arch: str = "distilbert", size: str = "tiny", task: str = "text-classification",
                      num_labels: int = 2, seed: int = 0) -> Path:
    """Save a random-weight ``distilbert`` or ``bert`` model with a WordPiece tokenizer into ``path``."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, DistilBertConfig

    path = Path(path)
    layers, hidden, heads, inter = SIZES[size]
    vocab = 30522 if size == "base" else len(VOCAB)
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    label2id = {f"LABEL_{i}": i for i in range(num_labels)}
    config: DistilBertConfig | BertConfig
    if arch == "distilbert":
        config = DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=inter,
                                  max_position_embeddings=512, id2label=id2label, label2id=label2id)
    elif arch == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, max_position_embeddings=512, id2label=id2label,
                            label2id=label2id)
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    from onnxguard.convert.hf import no_progress_bars

    with no_progress_bars():
        auto.from_config(config).eval().save_pretrained(path)
    save_tokenizer(path)
    return path
