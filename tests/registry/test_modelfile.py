"""The Modelfile's chat format: a ChatML template (with or without a default system
prompt) becomes Ollama's Go template and SYSTEM only when it renders every probe
conversation as Ollama would; any other template is left to the GGUF's metadata."""

from __future__ import annotations

import jinja2

from honed.models.tiny import CHAT_TEMPLATE
from honed.registry.modelfile import CHATML_GO_TEMPLATE, chat_format, modelfile_text, ollama_render

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


class FakeTokenizer:
    """What chat_format reads of a tokenizer: its vocabulary, eos token and template."""

    def __init__(self, template: str, eos: str, vocab: tuple[str, ...]) -> None:
        self.template, self.eos_token, self.vocab = jinja2.Template(template), eos, vocab

    def get_vocab(self) -> dict[str, int]:
        return {token: index for index, token in enumerate(self.vocab)}

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool) -> str:
        assert not tokenize
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_the_tiny_bases_chatml_becomes_the_go_template_without_a_system_prompt():
    chat = chat_format(FakeTokenizer(CHAT_TEMPLATE, "<|im_end|>", ("a", "<|im_start|>", "<|im_end|>")))
    assert chat.template == CHATML_GO_TEMPLATE and chat.system is None and chat.stop == ["<|im_end|>"]
    text = modelfile_text("m.gguf", chat, ["adapter 3 (main-a3)"])
    assert text.splitlines()[:2] == ["# adapter 3 (main-a3)", "FROM ./m.gguf"]
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text and "SYSTEM" not in text


def test_smollm2s_default_system_prompt_becomes_the_modelfiles_system():
    chat = chat_format(FakeTokenizer(SMOLLM2_TEMPLATE, "<|im_end|>", ("<|endoftext|>", "<|im_start|>", "<|im_end|>")))
    assert chat.template == CHATML_GO_TEMPLATE
    assert chat.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile_text("m.gguf", chat, [])
    # Ollama puts SYSTEM first only where the conversation has no system message of its own.
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert ollama_render(own, chat.system) == "<|im_start|>system\nBe brief.<|im_end|>\n" \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_that_is_not_chatml_gets_no_template_and_says_why():
    chat = chat_format(FakeTokenizer(LLAMA3_TEMPLATE, "<|eot_id|>", ("<|eot_id|>",)))
    assert chat.template is None and chat.stop == ["<|eot_id|>"]
    text = modelfile_text("m.gguf", chat, [])
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "") and "not ChatML" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text
