"""The text a chat template puts between a sampled assistant turn and the next one (the "delta" method)."""
from __future__ import annotations

_PREFIX = [{"role": "user", "content": "1+1?"}]
_SENTINEL = "SAMPLED-ASSISTANT-TURN"


class TemplateNotPrefixConsistent(ValueError):
    """The chat template re-renders earlier turns once tool messages follow, so no fixed text can be appended."""


def end_of_turn(tokenizer) -> str:
    """The token that ends a sampled assistant turn: ``<|im_end|>`` for ChatML tokenizers, else the EOS token."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")  # not get_vocab(): that copies a 150k-entry dict
    return "<|im_end|>" if im_end is not None and im_end != tokenizer.unk_token_id else tokenizer.eos_token


def tool_turn_text(tokenizer, tool_messages: list[dict], tools: list[dict] | None = None) -> str:
    """The exact text that follows a sampled assistant turn carrying tool calls: from just after its end-of-turn
    token (:func:`end_of_turn`) up to and including the next assistant generation prompt. For ChatML / Qwen3:
    ``"\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n"``.

    Derived from ``tokenizer``'s own chat template: P = render(prefix, generation prompt) is the text the turn was
    sampled after, F = render(prefix + [assistant S] + tool_messages, generation prompt); the template is
    prefix-consistent when F starts with P + S + end-of-turn, and the answer is the rest of F. ``tools`` goes to
    both renders (it changes the system block, not the delta, in Qwen3-style templates). Raises
    :class:`TemplateNotPrefixConsistent` when F does not start that way (the loop would then train on a sequence
    the template never produces). Tokenise the result on its own and append the ids after the sampled ones.
    """
    if not tool_messages:
        raise ValueError("tool_turn_text needs at least one tool message (a turn without calls ends the trajectory)")
    eot = end_of_turn(tokenizer)
    if not eot:
        raise TemplateNotPrefixConsistent("the tokenizer has no <|im_end|> and no eos_token to end a turn with")

    def render(messages, **kw):
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, **kw)

    prompt = render(_PREFIX, add_generation_prompt=True)
    full = render([*_PREFIX, {"role": "assistant", "content": _SENTINEL}, *tool_messages], add_generation_prompt=True)
    head = prompt + _SENTINEL + eot
    if not full.startswith(head):
        at = next((i for i, (a, b) in enumerate(zip(head, full)) if a != b), min(len(head), len(full)))
        raise TemplateNotPrefixConsistent(
            f"the chat template is not prefix-consistent: rendering an assistant turn then tool messages does not "
            f"start with the prompt the turn was sampled after, the turn and {eot!r} (first difference at character "
            f"{at}: expected {head[at:at + 40]!r}, got {full[at:at + 40]!r}); use a template that renders earlier "
            f"turns the same whatever follows")
    return full[len(head):]
