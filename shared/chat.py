"""Prompts as the model expects them: a string, or a list of chat messages rendered with the tokenizer's template.

A row's `prompt` is either a string or TRL's conversational format, a list of `{"role", "content"}` messages.
`PromptRenderer` turns either into a `Prompt`: the text the model reads and its token ids. Messages are rendered with
the chat template (`add_generation_prompt=True`, `task.chat_template_kwargs`, `task.system_prompt` put first when the
row has no system message, `model.chat_template` overriding the tokenizer's), and the ids come from the template
itself (`apply_chat_template(..., tokenize=True)`): re-tokenizing the rendered text would add the tokenizer's BOS in
front of a template that already starts with one (LFM2). The engine gets the ids, never the text.

`task.prompt_format` says what a string prompt is: `plain` (the text as-is, the tokenizer adds its BOS), `chat` (one
user message), or `auto` (plain, with a one-time warning when the model has a chat template: an instruct model fed a
raw string tends to answer with a token or two and stop, and every reward is 0 without any error).

The driver loads the tokenizer once and renders every prompt it sends; `eos_token_ids` is what a rollout worker stops
at. Only transformers is needed, so the driver, the workers and the tools share this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.errors import UserError
from shared.records import Prompt

Messages = list[dict[str, Any]]
PROMPT_FORMATS = ("auto", "chat", "plain")


class PromptFormatError(UserError, ValueError):
    """A prompt that cannot be rendered the way the config asks (no chat template, malformed messages)."""


def is_conversational(prompt: Any) -> bool:
    """Whether a prompt is a list of chat messages (TRL's conversational format) rather than a string."""
    return isinstance(prompt, (list, tuple))


def check_messages(prompt: Any) -> str | None:
    """Why `prompt` is not a usable list of messages, or None when it is."""
    if not prompt:
        return "the list of messages is empty"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict):
            return f"message {i} is a {type(message).__name__}, not an object with role and content"
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            return f"message {i} needs a string 'role' and a string 'content', got {message!r}"
    return None


def prompt_key(prompt: str | Sequence[dict[str, Any]]) -> str:
    """A string that identifies a prompt (pass-rate history, retirement): the string itself, or the messages as
    JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True, ensure_ascii=False)


def message_text(value: Any) -> str:
    """The text of a completion or prompt in either format: a string as is, a list of messages as the content of
    its last message (a conversational completion is one assistant message)."""
    if isinstance(value, str):
        return value
    if is_conversational(value) and value:
        return str(value[-1].get("content", ""))
    return "" if value is None else str(value)


class PromptRenderer:
    """Renders prompts for one model's tokenizer under one run's settings (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt_format: str = "auto",
        chat_template: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
        system_prompt: str | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or None
        self.template_kwargs = dict(template_kwargs or {})
        self.system_prompt = system_prompt
        self._warn = warn or _warn_stderr
        self._warned = False

    @classmethod
    def from_config(cls, config: Any, model_path: str, warn: Callable[[str], None] | None = None) -> PromptRenderer:
        """The renderer of a run: the tokenizer of `model.tokenizer` (else the model directory) and the task's
        prompt settings."""
        template = None
        if config.model.chat_template:
            path = Path(config.model.chat_template)
            if not path.is_file():
                raise PromptFormatError(f"model.chat_template: file not found: {path}")
            template = path.read_text()
        return cls(
            load_tokenizer(config.model.tokenizer or model_path, config.model.trust_remote_code),
            prompt_format=config.task.prompt_format,
            chat_template=template,
            template_kwargs=config.task.chat_template_kwargs,
            system_prompt=config.task.system_prompt,
            warn=warn,
        )

    def uses_chat(self, prompt: Any) -> bool:
        """Whether `prompt` is rendered with the chat template."""
        return is_conversational(prompt) or self.prompt_format == "chat"

    def messages(self, prompt: str | Sequence[dict[str, Any]]) -> Messages | None:
        """The messages `prompt` is rendered from (system prompt included), or None for a plain prompt."""
        if not self.uses_chat(prompt):
            return None
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if self.system_prompt is not None and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def render(self, prompt: str | Sequence[dict[str, Any]]) -> Prompt:
        """The text and token ids the engine gets for `prompt`, and the messages it was rendered from."""
        messages = self.messages(prompt)
        if messages is None:
            self._check_plain()
            assert isinstance(prompt, str)
            return Prompt(prompt, tuple(self.tokenizer(prompt)["input_ids"]), None)
        if self.prompt_format == "plain":
            raise PromptFormatError(
                "task.prompt_format=plain, but a prompt is a list of messages; use task.prompt_format=auto or chat"
            )
        problem = check_messages(messages)
        if problem:
            raise PromptFormatError(f"prompt {prompt!r}: {problem}")
        if not self.chat_template:
            raise PromptFormatError(
                "prompts are chat messages but the model's tokenizer has no chat template: set model.chat_template to "
                "a Jinja template file, or give string prompts with task.prompt_format=plain"
            )
        kwargs = dict(add_generation_prompt=True, chat_template=self.chat_template, **self.template_kwargs)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return Prompt(text, tuple(ids), tuple(messages))

    def render_user_turn(self, text: str) -> Prompt:
        """`text` rendered as one user message (the system prompt added as for the run's prompts)."""
        return self.render([{"role": "user", "content": text}])

    def count_tokens(self, prompt: str | Sequence[dict[str, Any]]) -> int:
        """Prompt length in tokens as the engine gets it."""
        return len(self.render(prompt).token_ids)

    def _check_plain(self) -> None:
        if self.prompt_format == "auto" and self.chat_template and not self._warned:
            self._warned = True
            self._warn(
                "prompts are plain strings and the model's tokenizer has a chat template: the strings go to the "
                "engine as they are, without the template (an instruct model may answer them poorly). Set "
                "task.prompt_format=chat to send each as one user message through the template, or "
                "task.prompt_format=plain to keep them raw without this warning"
            )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def eos_token_ids(model_path: str, tokenizer: Any, trust_remote_code: bool = False) -> tuple[int, ...]:
    """Every id the model ends a turn with: its generation config's `eos_token_id` (an int or a list) and the
    tokenizer's EOS, in that order, without repeats."""
    from transformers import GenerationConfig

    ids: list[int] = []
    try:
        generation = GenerationConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        configured = generation.eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        configured = None
    if configured is not None:
        ids.extend([configured] if isinstance(configured, int) else configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids))


def _warn_stderr(message: str) -> None:
    print(f"[prolora] warning: {message}", file=sys.stderr, flush=True)
