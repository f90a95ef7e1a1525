"""A tiny random Llama model that mlx-lm loads, trains, fuses and generates with, in seconds.

2 layers, hidden 64, a byte-level BPE tokenizer trained with `tokenizers` on the repository's example
documents, and one of three chat templates (ChatML, Llama-3-style with a date line, Gemma-style with
no system role) so template handling can be tested without a model hub.

    python tests/tiny_model.py /tmp/tiny [chatml|llama3|gemma]
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


def training_text() -> list[str]:
    """A few KB of real prose for the tokenizer: the example documents, or a fallback."""
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted((REPO / "sources").rglob("*.md"))]
    texts.append(
        "The quick brown fox jumps over the lazy dog. What do you think about attention, habits, "
        "cities, learning and craft? I think slow work is honest work. 0123456789 !?.,;:'\"()-"
    )
    return texts


def build_tiny_model(path: Path, template: str = "chatml", vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny random llama model folder at `path` and return it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = TEMPLATES[template]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    tokenizer.save(str(path / "tokenizer.json"))

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
        "eos_token_id": eos_id,
        "bos_token_id": bos_id,
        "torch_dtype": "float32",
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config, indent=2))
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
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return path


if __name__ == "__main__":
    out = build_tiny_model(Path(sys.argv[1]), *(sys.argv[2:3] or ["chatml"]))
    print(out)
