"""Regenerate tests/data/tokenizers/llama3-style-tiny: a tiny byte-level BPE tokenizer trained
offline on a few strings, with Llama 3's special tokens and the chat template of
Meta-Llama-3-8B-Instruct. It is NOT Llama 3's vocabulary: it only exercises a second chat-template
family (<|start_header_id|>role<|end_header_id|>\\n\\n … <|eot_id|>) in the tokenization tests.

    .venv/bin/python tests/data/tokenizers/make_llama3_style_tiny.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

OUT = Path(__file__).resolve().parent / "llama3-style-tiny"
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CORPUS = [
    "Thought: I should look around first.\nAction: look around",
    "Observation: This room is called the kitchen. You see a stove, a sink and a fridge.",
    "Your task is to boil water. First, focus on the substance.",
    "Action: teleport to kitchen\nAction: open fridge\nAction: pick up pot\nAction: activate stove",
    "You are an agent acting in a text environment to accomplish the user's task.",
    "Reply in this format:\nThought: <your reasoning>\nAction: <one action>",
    "search[red shoes] click[Buy Now] click[Next >] click[< Back to Search]",
    "system user assistant",
]


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
    fast.chat_template = CHAT_TEMPLATE
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)


if __name__ == "__main__":
    main()
