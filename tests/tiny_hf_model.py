"""A tiny random Llama in Hugging Face layout (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a ChatML template), for the MLX and
vLLM engines. The tokenizer is a byte-level BPE trained here, so nothing comes
from a hub. Head size 32, which vLLM's CPU attention accepts. The special
tokens' output rows are zero, so greedy decoding never ends early."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ("the quick brown fox jumps over the lazy dog. hello world, how are you today? "
          "once upon a time there was a small model that answered every question. "
          "system user assistant say hello tell a long story about the weather in paris. ")


def _tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "model_max_length": 2048, "add_bos_token": False}))
    return tok.get_vocab_size()


def write_tiny_hf_model(folder: Path, hidden: int = 128, layers: int = 2, heads: int = 4,
                        seed: int = 0) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(folder)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = ids.token_to_id("<|im_end|>")
    ffn, head_dim = hidden * 2, hidden // heads
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": head_dim, "vocab_size": vocab,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "eos_token_id": eos, "bos_token_id": None,
        "torch_dtype": "float32", "hidden_act": "silu"}))
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0),
               "model.norm.weight": np.ones(hidden, np.float32)}
    head = w(vocab, hidden, scale=1.0)
    for token in SPECIAL:
        head[ids.token_to_id(token)] = 0.0
    tensors["lm_head.weight"] = head
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": w(ffn, hidden),
            p + "mlp.up_proj.weight": w(ffn, hidden),
            p + "mlp.down_proj.weight": w(hidden, ffn),
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32)})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
