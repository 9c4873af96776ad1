"""The Ollama ``Modelfile`` written beside an exported GGUF.

Ollama formats a conversation with the Go template in the Modelfile's ``TEMPLATE``,
not with the Jinja chat template in the GGUF; a template that differs from the one the
model was trained with is the classic cause of garbage answers after an export. So the
template is not guessed from the model's name: the base's own chat template is rendered
on probe conversations and compared with what the Go template below produces for them
(:func:`ollama_render` is that Go template's semantics, written in Python). Only when
every probe matches is ``TEMPLATE`` written; a default system prompt that the base's
template inserts (SmolLM2 does) becomes the Modelfile's ``SYSTEM``, which Ollama inserts
the same way, only when a conversation has no system message of its own.

ChatML (``<|im_start|>role\\n...<|im_end|>\\n``: SmolLM2, Qwen, honed's tiny base) is the
template written today; for any other the Modelfile says so in a comment and leaves
``TEMPLATE`` out, so Ollama falls back to the template in the GGUF's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)

# Conversations the base's template and the Go template must render alike: a bare
# question, one with a system message, and several turns.
PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"},
     {"role": "user", "content": "Reverse xyz."}],
)


@dataclass
class ChatFormat:
    """How Ollama must format conversations for this model: the Go template (None when
    honed could not render the base's template equivalently), the default system prompt
    and the stop strings."""

    template: str | None
    system: str | None
    stop: list[str]
    note: str = ""


def ollama_render(messages: list[dict[str, str]], system: str | None) -> str:
    """What Ollama renders with :data:`CHATML_GO_TEMPLATE` and ``SYSTEM`` ``system`` for
    ``messages`` when asked to generate the next assistant turn."""
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return turns + f"{IM_START}assistant\n"


def _default_system(rendered: str) -> str | None:
    """The system prompt a template put before a conversation that had none."""
    head = f"{IM_START}system\n"
    if not rendered.startswith(head) or IM_END not in rendered:
        return None
    return rendered[len(head):rendered.index(IM_END)]


def chat_format(tokenizer: Any) -> ChatFormat:
    """The Modelfile's template, system prompt and stops for ``tokenizer``'s chat template."""
    vocab = tokenizer.get_vocab()
    stop = [t for t in dict.fromkeys([IM_END if IM_END in vocab else None, tokenizer.eos_token]) if t]

    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    try:
        rendered = [render(p) for p in PROBES]
    except Exception as exc:  # a template that cannot render a plain conversation
        return ChatFormat(None, None, stop, f"the base's chat template could not be rendered ({exc})")
    system = _default_system(rendered[0])
    if all(r == ollama_render(p, system) for p, r in zip(PROBES, rendered)):
        return ChatFormat(CHATML_GO_TEMPLATE, system, stop)
    return ChatFormat(None, None, stop, "the base's chat template is not ChatML, the one honed writes as an "
                      "Ollama template; Ollama will use the template in the GGUF's metadata")


def modelfile_text(gguf_name: str, fmt: ChatFormat, lineage: list[str]) -> str:
    """The Modelfile: lineage comments, ``FROM`` the GGUF beside it, the template, the
    system prompt and one ``PARAMETER stop`` per end-of-turn string."""
    lines = [f"# {line}" for line in lineage]
    lines.append(f"FROM ./{gguf_name}")
    if fmt.template is not None:
        lines.append(f'TEMPLATE """{fmt.template}"""')
    else:
        lines.append(f"# no TEMPLATE: {fmt.note}")
    if fmt.system is not None:
        lines.append(f'SYSTEM """{fmt.system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in fmt.stop]
    return "\n".join(lines) + "\n"
