"""Write a scripted GGUF: through the real llama.cpp engine it answers every
prompt with a fixed text, whatever the sampling settings.

How: one Llama block whose attention and FFN weights are zero, so the
residual stream carries the last token's embedding through unchanged; the
embeddings are one-hot; the output matrix gives one token, the *successor*
of the current one, a logit of OUTPUT_GAIN * sqrt(n_embd) (about 200) and
every other token 0. The next token therefore depends on the current token
alone, and each script is a chain of distinct vocabulary tokens: its cue
(the last token of the prompt) -> its pieces -> end of turn.

A model holds several scripts, each keyed by its cue: "\\n" is the byte
token that ends a ChatML generation prompt (`<|im_start|>assistant\\n`) and
the default, which every token outside a chain also leads to; any other cue
becomes a user-defined token, which the tokenizer reads whole, so the chat
template picks the script by what its generation prompt ends with (e.g.
`<think>` when the template opens the reasoning itself, or `</think>` when
`enable_thinking` is false).

Pieces are written as given, each one token: a test splits a tag, a JSON
call or a UTF-8 character wherever it wants the stream to split. llama.cpp
refuses a vocabulary with two equal tokens, so every piece must differ from
the others, from the cues and from the 256 single bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from tests.tiny_model import _byte_symbols, add_vocabulary, base_vocabulary

OUTPUT_GAIN = 10.0
DEFAULT_CUE = "\n"
Piece = Union[str, bytes]  # bytes: part of a UTF-8 character, split across tokens

# A Qwen-style ChatML template that renders tools (so the engine passes them
# to it) and history reasoning; its generation prompt ends with a cue:
# `</think>` when thinking is switched off, `<|tool_result|>` after a tool's
# answer, else the plain newline.
SCRIPTED_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>"
    "<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.reasoning_content %}<think>\n{{ message.reasoning_content }}\n</think>\n\n"
    "{% endif %}{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments }}}"
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>"
    "{%- elif messages[-1].role == 'tool' %}<|tool_result|>{% endif %}{% endif %}"
)
# DeepSeek-R1 style: the generation prompt opens the reasoning itself.
OPENS_THINK_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>{% endif %}"
)


def _as_vocab_text(piece: Piece) -> str:
    """A piece as a byte-level BPE vocabulary entry (GPT-2's byte symbols)."""
    data = piece.encode("utf-8") if isinstance(piece, str) else piece
    symbols = _byte_symbols()
    return "".join(symbols[b] for b in data)


def write_scripted_model(path: Path, scripts: dict[str, list[Piece]],
                         chat_template: str = SCRIPTED_TEMPLATE) -> Path:
    """`scripts` maps a cue to the pieces the model answers with after it;
    DEFAULT_CUE must be among them."""
    import gguf

    if DEFAULT_CUE not in scripts:
        raise ValueError("scripts need the default cue '\\n'")
    tokens, types = base_vocabulary(gguf)
    eos = tokens.index("<|im_end|>")
    cue_ids: dict[str, int] = {DEFAULT_CUE: _byte_symbols().index(_as_vocab_text(DEFAULT_CUE))}
    for cue in scripts:
        if cue != DEFAULT_CUE:
            cue_ids[cue] = len(tokens)
            tokens.append(cue)
            types.append(gguf.TokenType.USER_DEFINED)
    chains: dict[str, list[int]] = {}
    for cue, pieces in scripts.items():
        chain = []
        for piece in pieces:
            text = _as_vocab_text(piece)
            if text in tokens:
                raise ValueError(f"piece {piece!r} is already a token: every piece must be "
                                 f"new (split or join it differently)")
            chain.append(len(tokens))
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
        chains[cue] = chain

    n_vocab = len(tokens)
    n_embd = -(-n_vocab // 64) * 64  # one-hot embeddings need a dimension per token
    successor = np.full(n_vocab, chains[DEFAULT_CUE][0] if chains[DEFAULT_CUE] else eos)
    for cue, chain in chains.items():
        path_ids = [cue_ids[cue]] + chain + [eos]
        for current, following in zip(path_ids, path_ids[1:]):
            successor[current] = following

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("scripted-test-llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(n_embd)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_vocabulary(writer, tokens, types)
    writer.add_chat_template(chat_template)

    embeddings = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embeddings[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    output[successor, np.arange(n_vocab)] = OUTPUT_GAIN
    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", np.zeros((n_embd, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((64, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((64, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((n_embd, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def script_text(pieces: list[Piece]) -> str:
    """What a script reads as, once its pieces are joined."""
    return b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in pieces).decode("utf-8")


# The scripted models of the tests: what each answers, cue by cue -----------------------
THINK_REPLY: list[Piece] = [
    "<thi", "nk>", "\nThe user asks for ", "17 × 23", ". 17 × 20 = 340, ", "17 × 3 = 51; ",
    "340 + 51 = 391.", "\n</", "think>", "\n\n", "答案是 ", "39", "1。", b"\xe5\x86",
    b"\x8d\xe8\xa7\x81\xef\xbc\x81"]
THINK_REASONING = "The user asks for 17 × 23. 17 × 20 = 340, 17 × 3 = 51; 340 + 51 = 391."
THINK_ANSWER = "答案是 391。再见！"
THINK_REASONING_TOKENS = 9  # the pieces up to the one that closes the reasoning
NO_THINK_REPLY: list[Piece] = ["Just ", "391."]
AGENT_REPLY: list[Piece] = [
    "<think>", "\nI should use ", "the calculator.", "\n</think>\n\n", "<tool_", "call>\n",
    '{"name": "Calc', 'ulator", "arguments": ', '{"input": "17', '*23"}}', "\n</tool_call>"]
AGENT_REASONING = "I should use the calculator."
AGENT_AFTER_TOOL: list[Piece] = ["17 × 23 = ", "391."]
PARALLEL_REPLY: list[Piece] = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>']
R1_REPLY: list[Piece] = ["\nCounting", " letters.", "\n</think>\n\n", "Three."]
UNOPENED_REPLY: list[Piece] = ["I reason ", "here.", "</think>", "The answer."]
THINK_SCRIPTS: dict[str, list[Piece]] = {
    DEFAULT_CUE: THINK_REPLY, "</think>": NO_THINK_REPLY,
    "<|tool_result|>": ["The tool ", "says 391."]}


def write_test_models(folder: Path) -> Path:
    """The scripted models, as GGUF files in `folder` (their ids are the file stems)."""
    from tests.tiny_model import CHATML_TEMPLATE

    write_scripted_model(folder / "scripted-think.gguf", THINK_SCRIPTS)
    write_scripted_model(folder / "scripted-agent.gguf", {
        DEFAULT_CUE: AGENT_REPLY, "<|tool_result|>": AGENT_AFTER_TOOL})
    write_scripted_model(folder / "scripted-parallel.gguf", {
        DEFAULT_CUE: PARALLEL_REPLY, "<|tool_result|>": ["Sunny in ", "both."]})
    write_scripted_model(folder / "scripted-r1.gguf", {DEFAULT_CUE: ["unused"],
                                                        "<think>": R1_REPLY},
                         chat_template=OPENS_THINK_TEMPLATE)
    write_scripted_model(folder / "scripted-unopened.gguf", {DEFAULT_CUE: UNOPENED_REPLY},
                         chat_template=CHATML_TEMPLATE)
    return folder


def write_scripted_hf_model(folder: Path, scripts: dict[str, list[Piece]],
                            chat_template: str = SCRIPTED_TEMPLATE) -> Path:
    """The same scripted model in Hugging Face layout, for the MLX and vLLM
    engines: a byte-level BPE vocabulary whose pieces are plain entries
    (no merge produces them), cues as added tokens the tokenizer reads whole,
    and a one-block Llama with one-hot embeddings and zero attention and MLP.
    Heads of 32 dimensions, which vLLM's CPU attention accepts."""
    from safetensors.numpy import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if DEFAULT_CUE not in scripts:
        raise ValueError("scripts need the default cue '\\n'")
    folder.mkdir(parents=True, exist_ok=True)
    tokens = _byte_symbols() + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    cues = [cue for cue in scripts if cue != DEFAULT_CUE]
    tokens += cues
    chains: dict[str, list[int]] = {}
    for cue, pieces in scripts.items():
        chains[cue] = []
        for piece in pieces:
            text = _as_vocab_text(piece)
            if text in tokens:
                raise ValueError(f"piece {piece!r} is already a token")
            chains[cue].append(len(tokens))
            tokens.append(text)
    vocab = {text: i for i, text in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.add_tokens([AddedToken(cue, special=False, normalized=False) for cue in cues])
    tokenizer.save(str(folder / "tokenizer.json"))
    eos = vocab["<|im_end|>"]
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": chat_template,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "model_max_length": 4096, "add_bos_token": False}))

    n_vocab = len(tokens)
    hidden = -(-n_vocab // 32) * 32
    heads, ffn = hidden // 32, 64
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": 1, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": 32, "vocab_size": n_vocab,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "eos_token_id": eos, "bos_token_id": None,
        "torch_dtype": "float32", "hidden_act": "silu"}))
    successor = np.full(n_vocab, chains[DEFAULT_CUE][0] if chains[DEFAULT_CUE] else eos)
    cue_ids = {DEFAULT_CUE: vocab[_as_vocab_text(DEFAULT_CUE)], **{c: vocab[c] for c in cues}}
    for cue, chain in chains.items():
        path_ids = [cue_ids[cue]] + chain + [eos]
        for current, following in zip(path_ids, path_ids[1:]):
            successor[current] = following
    embeddings = np.zeros((n_vocab, hidden), np.float32)
    embeddings[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    head = np.zeros((n_vocab, hidden), np.float32)
    head[successor, np.arange(n_vocab)] = OUTPUT_GAIN
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    p = "model.layers.0."
    save_file({"model.embed_tokens.weight": embeddings, "lm_head.weight": head,
               "model.norm.weight": np.ones(hidden, np.float32),
               p + "input_layernorm.weight": np.ones(hidden, np.float32),
               p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
               p + "self_attn.q_proj.weight": zeros(hidden, hidden),
               p + "self_attn.k_proj.weight": zeros(hidden, hidden),
               p + "self_attn.v_proj.weight": zeros(hidden, hidden),
               p + "self_attn.o_proj.weight": zeros(hidden, hidden),
               p + "mlp.gate_proj.weight": zeros(ffn, hidden),
               p + "mlp.up_proj.weight": zeros(ffn, hidden),
               p + "mlp.down_proj.weight": zeros(hidden, ffn)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder

