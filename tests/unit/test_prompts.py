"""Prompt templates and chat templating."""

import pytest

from lens_steer.prompts import COT_SUFFIX, DIRECT_SUFFIX, PromptTemplate, encode_prompt, render_prompt


def test_default_templates():
    t = PromptTemplate()
    assert t.user_message("Q?", "cot") == "Q?\n" + COT_SUFFIX
    assert t.user_message("Q?", "direct") == "Q?\n" + DIRECT_SUFFIX
    assert t.user_message("Q?", "none") == "Q?"
    with pytest.raises(ValueError, match="unknown prompt style"):
        t.user_message("Q?", "loud")
    with pytest.raises(ValueError, match="question"):
        PromptTemplate(cot="think hard")


def test_question_with_braces_is_not_formatted():
    assert PromptTemplate().user_message("f(x) = {x}", "none") == "f(x) = {x}"


def test_chat_template_and_ids(tiny):
    tok = tiny.tokenizer
    text = render_prompt(tok, "What is 2+3?", "cot")
    assert text == f"<s>user: What is 2+3?\n{COT_SUFFIX}</s><s>assistant: "
    ids = encode_prompt(tok, "What is 2+3?", "cot")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 2  # the template's two, no extra BOS
    assert tok.decode(ids) == text
    system = encode_prompt(tok, "Q", "direct", PromptTemplate(system="Be brief."))
    assert tok.decode(system).startswith("<s>system: Be brief.</s>")


def test_no_chat_template_fallback(tiny):
    import copy

    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = None
    ids = encode_prompt(tok, "Q?", "direct")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok.decode(ids[1:]) == f"Question: Q?\n{DIRECT_SUFFIX}\nAnswer:"
