"""CoT / direct prompt templates and chat templating, in one place; pure functions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

COT_SUFFIX = "Answer the question thinking step by step."
"""The paper's chain-of-thought instruction."""
DIRECT_SUFFIX = "Answer the question immediately, without any elaboration."
"""The paper's direct-answer instruction."""

PromptStyle = Literal["cot", "direct", "none"]
PROMPT_STYLES: tuple[str, ...] = ("cot", "direct", "none")


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes a user message, per prompt style.

    Each field is a ``str.format`` template with a ``{question}`` slot. The user
    message is then wrapped in the model's chat template (when it has one).

    Attributes:
        cot: Template of the chain-of-thought prompt.
        direct: Template of the direct prompt.
        none: Template with no instruction (the "plain" condition).
        system: Optional system message; ``None`` keeps the chat template's default.
    """

    cot: str = "{question}\n" + COT_SUFFIX
    direct: str = "{question}\n" + DIRECT_SUFFIX
    none: str = "{question}"
    system: str | None = None

    def __post_init__(self) -> None:
        for style in PROMPT_STYLES:
            if "{question}" not in getattr(self, style):
                raise ValueError(f"prompt template {style!r} has no {{question}} slot: {getattr(self, style)!r}")

    def user_message(self, question: str, style: PromptStyle) -> str:
        """The user message for ``question`` in ``style``."""
        if style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
        return getattr(self, style).replace("{question}", question)

    def to_dict(self) -> dict:
        """JSON-ready form, as recorded in saved vectors."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> PromptTemplate:
        """Read :meth:`to_dict`'s form back (missing styles take the defaults; unknown keys are ignored).

        Raises:
            ValueError: not an object, or a template without its ``{question}`` slot.
        """
        from collections.abc import Mapping
        from dataclasses import fields

        if not isinstance(data, Mapping):
            raise ValueError(f"prompt templates: expected an object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


DEFAULT_TEMPLATE = PromptTemplate()


def render_prompt(tokenizer, question: str, style: PromptStyle, template: PromptTemplate = DEFAULT_TEMPLATE) -> str:
    """The full prompt text: the user message inside the tokenizer's chat template.

    A tokenizer without a chat template gets ``"Question: ...\\nAnswer:"``.
    """
    message = template.user_message(question, style)
    if getattr(tokenizer, "chat_template", None):
        messages = []
        if template.system is not None:
            messages.append({"role": "system", "content": template.system})
        messages.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {message}\nAnswer:"


def encode_prompt(tokenizer, question: str, style: PromptStyle, template: PromptTemplate = DEFAULT_TEMPLATE) -> list[int]:
    """Token ids of the prompt. Pass ids, not strings, to the bridge (no extra BOS is added).

    Chat-templated text already carries its special tokens; a tokenizer without a chat
    template gets its BOS (if any) prepended once.
    """
    text = render_prompt(tokenizer, question, style, template)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not has_template and tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return list(ids)
