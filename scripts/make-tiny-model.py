"""Writes a tiny random-weight llama GGUF model for corral's end-to-end tests.

Usage: python make-tiny-model.py VOCAB.gguf OUT.gguf

VOCAB.gguf is a vocabulary-only GGUF (llama.cpp ships models/ggml-vocab-llama-spm.gguf in
its source); its tokenizer keys are copied over. The weights are small random numbers, so
the text a server generates is gibberish, but loading, health, models, timings and logs
are those of a real server. Two layers of width 64 make a file of about 17 MB that loads
in well under a second on a CPU.
"""
import sys

import gguf
import numpy as np

EMBD, FFN, LAYERS, HEADS = 64, 128, 2, 4


def copy_tokenizer(reader, writer):
    """Copies every tokenizer.* key; returns the vocabulary size."""
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            item_kind = field.types[-1]
            items = [field.parts[i] for i in field.data]
            if item_kind == gguf.GGUFValueType.STRING:
                items = [bytes(x).decode("utf-8", errors="replace") for x in items]
            else:
                items = [x.tolist()[0] for x in items]
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(items)
            writer.add_key_value(name, items, kind, sub_type=item_kind)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_key_value(name, bytes(field.parts[-1]).decode(), kind)
        else:
            writer.add_key_value(name, field.parts[-1].tolist()[0], kind)
    if not n_vocab:
        sys.exit("the vocabulary file has no tokenizer.ggml.tokens")
    return n_vocab


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    vocab, out = sys.argv[1], sys.argv[2]
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("corral-tiny")
    writer.add_context_length(512)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBD // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    n_vocab = copy_tokenizer(gguf.GGUFReader(vocab), writer)
    writer.add_vocab_size(n_vocab)

    rng = np.random.default_rng(7)

    def random(name, shape):
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name):
        writer.add_tensor(name, np.ones(EMBD, dtype=np.float32))

    random("token_embd.weight", (n_vocab, EMBD))
    ones("output_norm.weight")
    random("output.weight", (n_vocab, EMBD))
    for layer in range(LAYERS):
        prefix = f"blk.{layer}"
        ones(f"{prefix}.attn_norm.weight")
        ones(f"{prefix}.ffn_norm.weight")
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            random(f"{prefix}.{part}.weight", (EMBD, EMBD))
        random(f"{prefix}.ffn_gate.weight", (FFN, EMBD))
        random(f"{prefix}.ffn_up.weight", (FFN, EMBD))
        random(f"{prefix}.ffn_down.weight", (EMBD, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out} ({n_vocab} tokens)")


if __name__ == "__main__":
    main()
