"""Tiny random Llama and Qwen2 models that mlx-lm loads, trains, fuses and generates with, in seconds.

Llama: 2 layers, hidden 64, a byte-level BPE tokenizer trained with `tokenizers` on the repository's
example documents, and one of three chat templates (ChatML, Llama-3-style with a date line,
Gemma-style with no system role) so template handling can be tested without a model hub.

Qwen2 (`build_tiny_qwen2`): the same size, laid out like Qwen2.5-Instruct, the default base model:
q/k/v biases, tied embeddings, an embedding padded past the tokenizer's last id, Qwen2's
pre-tokenizer (single digits, NFC), its added `<tool_call>` tokens, and Qwen2.5's own chat template,
which writes "You are Qwen, created by Alibaba Cloud..." when no system message is given.

    python tests/tiny_model.py /tmp/tiny [chatml|llama3|gemma|qwen2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TEMPLATES = {
    # Qwen/SmolLM style.
    "chatml": {
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "template": (
            "{% for message in messages %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
    },
    # Llama 3.x style: injects a "Cutting Knowledge Date / Today Date" block into the system turn.
    "llama3": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "template": (
            "{{ bos_token }}"
            "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
            "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
            "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}"
            "{{ 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}"
            "{{ system_message }}{{ '<|eot_id|>' }}"
            "{% for message in messages %}"
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
        ),
    },
    # Gemma style: no system role at all (raises if one is given).
    "gemma": {
        "bos": "<bos>",
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "specials": ["<bos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
        "template": (
            "{{ bos_token }}"
            "{% for message in messages %}"
            "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
            "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
            "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
        ),
    },
}


QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")  # Llama 3's: digits in threes
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5-Instruct's chat template, as its tokenizer_config.json has it.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def training_text() -> list[str]:
    """A few KB of real prose for the tokenizer: the example documents, or a fallback."""
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((REPO / "sources").rglob("*.md"))]
    texts.append(
        "The quick brown fox jumps over the lazy dog. What do you think about attention, habits, "
        "cities, learning and craft? I think slow work is honest work. 0123456789 !?.,;:'\"()-"
    )
    return texts


def train_tokenizer(path: Path, specials: list[str], vocab_size: int, pre: str = "gpt2"):
    """A byte-level BPE trained on `training_text()`, saved as path/tokenizer.json. `pre`: GPT-2's
    pre-tokenizer; "qwen2": Qwen2's split regex, then byte-level without a regex, NFC first;
    "llama3": Llama 3's split regex (digits in threes) and its whole-word lookup (ignore_merges)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(ignore_merges=pre == "llama3"))
    if pre in ("qwen2", "llama3"):
        if pre == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT if pre == "qwen2" else LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    return tokenizer


def save_model(path: Path, model, config: dict, tokenizer_config: dict) -> Path:
    """Flattened parameters, config.json and tokenizer_config.json: what mlx-lm loads."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.eval(model.parameters())
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return path


def build_tiny_model(path: Path, template: str = "chatml", vocab_size: int = 512, seed: int = 0,
                     pre: str = "gpt2", rope_scaling: dict | None = None) -> Path:
    """Write a tiny random llama model folder at `path` and return it ("qwen2": `build_tiny_qwen2`).
    `pre` and `rope_scaling` make it more like Llama 3.x (pre="llama3", rope_type "llama3")."""
    import mlx.core as mx
    from mlx_lm.models import llama

    if template == "qwen2":
        return build_tiny_qwen2(path, vocab_size=vocab_size, seed=seed)
    spec = TEMPLATES[template]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(path, spec["specials"], vocab_size, pre=pre)

    eos_id = tokenizer.token_to_id(spec["eos"])
    bos_id = tokenizer.token_to_id(spec["bos"]) if spec["bos"] else None
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        **({"rope_scaling": rope_scaling} if rope_scaling else {}),
        "eos_token_id": eos_id,
        "bos_token_id": bos_id,
        "torch_dtype": "float32",
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": spec["template"],
        "eos_token": spec["eos"],
        "pad_token": spec["pad"],
        "bos_token": spec["bos"],
        "add_bos_token": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }
    return save_model(path, model, config, tokenizer_config)


def build_tiny_qwen2(path: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny random qwen2 model folder (Qwen2.5-Instruct's layout and template) and return it."""
    import mlx.core as mx
    from mlx_lm.models import qwen2
    from tokenizers import AddedToken

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size, pre="qwen2")
    # Qwen's tool-call markers are added tokens that are not special (llama.cpp: USER_DEFINED).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    tokenizer.save(str(path / "tokenizer.json"))
    n_tokens = tokenizer.get_vocab_size()
    config = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": -(-n_tokens // 64) * 64 + 64,  # padded past the last token id, as Qwen2.5's is
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "torch_dtype": "float32",
    }
    mx.random.seed(seed)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": QWEN25_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    return save_model(path, model, config, tokenizer_config)


if __name__ == "__main__":
    out = build_tiny_model(Path(sys.argv[1]), *(sys.argv[2:3] or ["chatml"]))
    print(out)
